"""Error budgets for stochastic systems (docs/slo.md): the pure arithmetic of budgets, burn
rates and the multiwindow, multi-burn-rate alerts of the Google SRE workbook, from counts
of good and total events per window; and what a good event is, per SLO.

Everything here is a function of counts, so it is tested with synthetic data and shared by
the in-process evaluation (counts from the store, ``ops/slo_service.py``) and the generated
Prometheus rules (counts from ``guarita_slo_events_total``, ``ops/slo_rules.py``): both
compare ``error ratio > burn rate x (1 - target)`` strictly, over windows closed at the
evaluation time, so they agree on the same data.

Request-based budgets: a 99% target over 30 days allows 1% of the period's events to be
bad. ``consumed`` is the share of that allowance used (1.0: used up; above 1: overspent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from guarita.settings_slo import (
    DEFAULT_QUALITY_THRESHOLD,
    SLO_NAMES,
    BurnWindow,
    FreezeSettings,
    SloName,
    SloSettings,
    duration_s,
)

AlertState = Literal["ok", "ticket", "page"]
BudgetState = Literal["ok", "warning", "exhausted"]
Outcome = Literal["good", "bad"]
DEFAULT_CONSISTENCY_THRESHOLD = 0.9


@dataclass(frozen=True, slots=True)
class Counts:
    """Events of one SLO in one window."""

    good: int
    total: int

    @property
    def bad(self) -> int:
        return self.total - self.good

    @property
    def error_ratio(self) -> float | None:
        """Bad over total; ``None`` without events (Prometheus: no sample, NaN)."""
        return self.bad / self.total if self.total else None


def error_budget(target: float) -> float:
    """The share of events allowed to be bad: 0.01 for a 99% target."""
    return 1.0 - target


def burn_rate(counts: Counts, target: float) -> float | None:
    """How fast the budget burns in a window: 1.0 uses exactly the budget over the period."""
    ratio = counts.error_ratio
    return None if ratio is None else ratio / error_budget(target)


def consumed(period: Counts, target: float) -> float:
    """The share of the period's allowance of bad events used (0 without events); rounded
    to 12 digits, so that 100 bad events of 10,000 use up a 99% budget exactly (1 - 0.99
    is 0.010000000000000009 in floating point)."""
    if not period.total:
        return 0.0
    return round(period.bad / (error_budget(target) * period.total), 12)


def remaining(period: Counts, target: float) -> float:
    """``1 - consumed``: below 0 when the budget is overspent."""
    return 1.0 - consumed(period, target)


def time_to_exhaustion_s(left: float, burn: float | None, period_s: float) -> float | None:
    """Seconds until the budget is used up if ``burn`` goes on at today's traffic: ``left``
    (the remaining share) over the share burnt per second (``burn / period``). 0 when it is
    used up already; ``None`` when nothing burns."""
    if left <= 0:
        return 0.0
    if not burn:
        return None
    return left * period_s / burn


def exceeds(counts: Counts, window_burn_rate: float, target: float) -> bool:
    """The workbook's test of one window: error ratio above ``burn_rate x budget``."""
    ratio = counts.error_ratio
    return ratio is not None and ratio > window_burn_rate * error_budget(target)


@dataclass(frozen=True, slots=True)
class WindowAlert:
    """One alert row evaluated: it fires when both of its windows exceed its burn rate."""

    severity: str
    burn_rate: float
    long_window: str
    short_window: str
    firing: bool


def window_alerts(
    windows: Sequence[BurnWindow], counts: Mapping[str, Counts], target: float
) -> list[WindowAlert]:
    """Every row of the table against the counts per window (keyed by duration)."""
    return [
        WindowAlert(
            w.severity,
            w.burn_rate,
            w.long_window,
            w.short_window,
            exceeds(counts[w.long_window], w.burn_rate, target)
            and exceeds(counts[w.short_window], w.burn_rate, target),
        )
        for w in windows
    ]


def alert_state(alerts: Sequence[WindowAlert]) -> AlertState:
    """``page`` if a page row fires, else ``ticket`` if a ticket row does, else ``ok``."""
    firing = {a.severity for a in alerts if a.firing}
    return "page" if "page" in firing else "ticket" if "ticket" in firing else "ok"


def budget_state(period: Counts, target: float, freeze: FreezeSettings) -> BudgetState:
    """``exhausted`` (deploys freeze) once the budget is used up, ``warning`` past
    ``warn_consumed``; ``ok`` under ``min_events`` events whatever they were."""
    if period.total < freeze.min_events:
        return "ok"
    used = consumed(period, target)
    if used >= 1.0:
        return "exhausted"
    return "warning" if used >= freeze.warn_consumed else "ok"


@dataclass(frozen=True, slots=True)
class Objective:
    """One SLO of one agent, with what makes its events good."""

    agent: str
    slo: SloName
    target: float
    threshold: float | None = None
    """quality / consistency: a record's value at or above it is good."""


@dataclass(frozen=True, slots=True)
class EventRules:
    """Which records are events of which SLO, and good or bad (the store's query and the
    per-record counter both follow these)."""

    bad_status_codes: frozenset[int]
    excluded_status_codes: frozenset[int]

    def outcome(self, objective: Objective, record: Mapping[str, Any]) -> Outcome | None:
        """A record (``requests`` columns) as an event of ``objective``; ``None``: not one.

        availability: every record but an excluded status; bad if 5xx or a bad status.
        quality / consistency: successful records that have the value; bad below the
        threshold."""
        code = int(record.get("status_code") or 0)
        if objective.slo == "availability":
            if code in self.excluded_status_codes:
                return None
            return "bad" if code >= 500 or code in self.bad_status_codes else "good"
        value = record.get(objective.slo)
        if record.get("status") != "success" or value is None:
            return None
        assert objective.threshold is not None
        return "good" if value >= objective.threshold else "bad"


def event_rules(settings: SloSettings) -> EventRules:
    return EventRules(
        frozenset(settings.bad_status_codes), frozenset(settings.excluded_status_codes)
    )


def objectives(settings: Any) -> list[Objective]:
    """Every agent's SLOs from the whole :class:`~guarita.settings.Settings` (thresholds
    default to the model's ``quality.min_score`` and the agent's consistency threshold)."""
    slo: SloSettings = settings.slo
    if not slo.enabled:
        return []
    found = []
    for name, agent in settings.agents.items():
        targets = slo.targets(name)
        model = settings.models.get(agent.model)
        min_score = model.quality.min_score if model is not None else None
        thresholds: dict[str, float | None] = {
            "availability": None,
            "quality": _first(targets.quality_threshold, min_score, DEFAULT_QUALITY_THRESHOLD),
            "consistency": _first(
                targets.consistency_threshold,
                agent.consistency.threshold if agent.consistency is not None else None,
                DEFAULT_CONSISTENCY_THRESHOLD,
            ),
        }
        for slo_name in SLO_NAMES:
            target = getattr(targets, slo_name)
            if target is not None:
                found.append(Objective(name, slo_name, target, thresholds[slo_name]))
    return found


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


def evaluation_windows(settings: SloSettings) -> list[str]:
    """The durations to count: the period and every alert window, each once, shortest first."""
    names = {settings.period, settings.exhaustion_window}
    for w in settings.windows:
        names |= {w.long_window, w.short_window}
    return sorted(names, key=duration_s)


@dataclass(slots=True)
class SloStatus:
    """One agent's SLO, evaluated: what ``/admin/slo`` and ``guarita slo status`` show."""

    agent: str
    slo: SloName
    target: float
    period: str
    good: int
    total: int
    consumed: float
    remaining: float
    burn_rates: dict[str, float | None]
    time_to_exhaustion_s: float | None
    alerts: list[WindowAlert]
    alert: AlertState
    budget: BudgetState
    threshold: float | None = None
    frozen: bool = False
    windows: dict[str, Counts] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "slo": self.slo, "target": self.target,
            "threshold": self.threshold, "period": self.period, "good": self.good,
            "total": self.total, "error_budget": round(error_budget(self.target), 12),
            "consumed": self.consumed, "remaining": self.remaining,
            "burn_rates": self.burn_rates, "time_to_exhaustion_s": self.time_to_exhaustion_s,
            "alert": self.alert, "budget": self.budget, "frozen": self.frozen,
            "alerts": [{"severity": a.severity, "burn_rate": a.burn_rate,
                        "long_window": a.long_window, "short_window": a.short_window,
                        "firing": a.firing} for a in self.alerts],
        }  # fmt: skip


def evaluate(
    objective: Objective, counts: Mapping[str, Counts], settings: SloSettings
) -> SloStatus:
    """An SLO's status from its counts per window (:func:`evaluation_windows`)."""
    target = objective.target
    period = counts[settings.period]
    used = consumed(period, target)
    burns = {w: burn_rate(c, target) for w, c in counts.items()}
    alerts = window_alerts(settings.windows, counts, target)
    return SloStatus(
        agent=objective.agent,
        slo=objective.slo,
        target=target,
        threshold=objective.threshold,
        period=settings.period,
        good=period.good,
        total=period.total,
        consumed=used,
        remaining=1.0 - used,
        burn_rates=burns,
        time_to_exhaustion_s=time_to_exhaustion_s(
            1.0 - used, burns.get(settings.exhaustion_window), duration_s(settings.period)
        ),
        alerts=alerts,
        alert=alert_state(alerts),
        budget=budget_state(period, target, settings.freeze),
        windows=dict(counts),
    )
