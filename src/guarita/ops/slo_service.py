"""Error budgets in process (docs/slo.md): each API process counts every agent's SLO events
from the store's records at an interval, and moves each budget's state (ok, warning,
exhausted) in the store by compare-and-swap, so a change is announced once across
processes: ``guarita.slo.budget_warning`` past 80% consumed, ``guarita.deploy.frozen`` when
a budget is used up and ``guarita.deploy.unfrozen`` when it is no longer, the last two also
audit entries. :class:`DeployFreeze` is what a rollout asks before starting or promoting.

The per-record counter ``guarita_slo_events_total`` feeds the generated Prometheus rules
(``ops/slo_rules.py``) with the same events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy.exc import SQLAlchemyError

from guarita.aio import cancel_and_wait
from guarita.errors import DeployFrozen
from guarita.ops.slo import (
    EventRules,
    Objective,
    SloStatus,
    evaluate,
    evaluation_windows,
    event_rules,
    objectives,
)
from guarita.settings_slo import SloSettings, duration_s
from guarita.store.database import Database
from guarita.store.slo import BudgetRecord, SloCounts, SloStates

log = structlog.get_logger("guarita.slo")

BUDGET_WARNING = "guarita.slo.budget_warning"
DEPLOY_FROZEN = "guarita.deploy.frozen"
DEPLOY_UNFROZEN = "guarita.deploy.unfrozen"
Action = Literal["start", "promote"]
Publish = Callable[[str, dict[str, Any]], None]
Audit = Callable[..., None]


def _percent(share: float) -> str:
    return f"{share * 100:.4g}%"


class SloEvaluator:
    """Every agent's SLOs counted from the store: one query per agent and window."""

    def __init__(self, settings: Any, db: Database) -> None:
        self.settings: SloSettings = settings.slo
        self.objectives = objectives(settings)
        unknown = set(self.settings.agents) - set(settings.agents)
        if unknown:
            from guarita.errors import ConfigError

            raise ConfigError(f"slo.agents: unknown agents {sorted(unknown)}")
        self.rules: EventRules = event_rules(self.settings)
        self._counts = SloCounts(db, self.rules)
        self.windows = evaluation_windows(self.settings)

    def by_agent(self, agent: str | None = None) -> dict[str, list[Objective]]:
        grouped: dict[str, list[Objective]] = {}
        for o in self.objectives:
            if agent is None or o.agent == agent:
                grouped.setdefault(o.agent, []).append(o)
        return grouped

    async def evaluate(
        self, agent: str | None = None, now: datetime | None = None
    ) -> list[SloStatus]:
        """The status of every SLO (of ``agent``) at ``now`` (default: the current time)."""
        now = now or datetime.now(UTC)
        statuses = []
        for name, objs in self.by_agent(agent).items():
            per_window = {}
            for window in self.windows:
                since = now - timedelta(seconds=duration_s(window))
                per_window[window] = await self._counts.count(name, objs, since, now)
            for o in objs:
                counts = {w: per_window[w][o.slo] for w in self.windows}
                statuses.append(evaluate(o, counts, self.settings))
        return statuses


@dataclass(frozen=True, slots=True)
class Transition:
    agent: str
    slo: str
    before: str
    after: str


class DeployFreeze:
    """Answers a rollout: may this agent change now? Refused (409 ``deploy_frozen``) while
    one of its budgets is exhausted, unless the change type is exempt (a security hotfix).
    Also moves the budgets' states after each evaluation, announcing what changed."""

    def __init__(
        self,
        settings: SloSettings,
        states: SloStates,
        objectives: Sequence[Objective],
        *,
        audit: Audit,
        publish: Publish,
        on_transition: Callable[[str, str, str], None] = lambda agent, slo, state: None,
        on_refusal: Callable[[str, str], None] = lambda agent, slo: None,
    ) -> None:
        self._settings = settings
        self.states = states
        self._targets: dict[tuple[str, str], float] = {
            (o.agent, o.slo): o.target for o in objectives
        }
        self._audit = audit
        self._publish = publish
        self._on_transition = on_transition
        self._on_refusal = on_refusal
        self._exhausted: list[Callable[[str, str], Awaitable[None]]] = []

    def on_exhausted(self, hook: Callable[[str, str], Awaitable[None]]) -> None:
        """Call ``hook(agent, slo)`` when this process moves a budget to ``exhausted`` (once
        across processes: the move is a compare-and-swap)."""
        self._exhausted.append(hook)

    async def check(self, agent: str, change_type: str, action: Action = "promote") -> None:
        """Return if ``agent`` may roll out a ``change_type`` change (``start`` a rollout or
        ``promote`` one); raise :class:`~guarita.errors.DeployFrozen` naming the budget."""
        freeze = self._settings.freeze
        if not freeze.enabled or change_type in freeze.exempt_change_types:
            return
        for record in await self.states.frozen(agent):
            target = self._targets.get((record.agent, record.slo))
            if target is None:  # an SLO no longer configured freezes nothing
                continue
            self._on_refusal(agent, record.slo)
            exempt = ", ".join(freeze.exempt_change_types) or "no change type"
            raise DeployFrozen(
                f"deploys of agent {agent!r} are frozen: its {record.slo} error budget "
                f"({_percent(1 - target)} of events over {self._settings.period}) is used up "
                f"({_percent(record.consumed)} consumed); cannot {action} a {change_type} "
                f"rollout (only {exempt} may roll out)",
                param="agent",
            )

    async def update(self, statuses: Sequence[SloStatus]) -> list[Transition]:
        """Move every budget whose state changed; the transitions this process won."""
        known = await self.states.all()
        won = []
        for s in statuses:
            record = known.get((s.agent, s.slo))
            before = record.state if record is not None else "ok"
            after = s.budget
            if before != after and await self.states.move(
                s.agent, s.slo, before, after, s.consumed
            ):
                won.append(Transition(s.agent, s.slo, before, after))
                self._announce(s, before, after)
                if after == "exhausted":
                    for hook in self._exhausted:
                        try:
                            await hook(s.agent, s.slo)
                        except Exception:  # one listener's bug stops no evaluation
                            log.exception("slo_exhausted_hook_failed", agent=s.agent)
            s.frozen = self._settings.freeze.enabled and after == "exhausted"
        return won

    def _announce(self, status: SloStatus, before: str, after: str) -> None:
        data = {"agent": status.agent, "slo": status.slo, "target": status.target,
                "period": status.period, "consumed": round(status.consumed, 6),
                "good": status.good, "total": status.total, "state": after,
                "previous_state": before}  # fmt: skip
        self._on_transition(status.agent, status.slo, after)
        log.warning("slo_budget_state", **data)
        if after == "exhausted":
            self._publish(DEPLOY_FROZEN, data)
            self._audit("change", "deploy.frozen", "slo-evaluator", f"agent:{status.agent}",
                        "success", details=data)  # fmt: skip
        elif before == "exhausted":
            self._publish(DEPLOY_UNFROZEN, data)
            self._audit("change", "deploy.unfrozen", "slo-evaluator", f"agent:{status.agent}",
                        "success", details=data)  # fmt: skip
        if after == "warning" and before == "ok":
            self._publish(BUDGET_WARNING, data)


class SloService:
    """The background evaluation: ``start()`` evaluates at once and then every
    ``slo.evaluate_every_s``; ``aclose()`` stops it."""

    def __init__(
        self,
        evaluator: SloEvaluator,
        freeze: DeployFreeze,
        *,
        on_status: Callable[[SloStatus], None] = lambda status: None,
    ) -> None:
        self.evaluator = evaluator
        self.freeze = freeze
        self._on_status = on_status
        self._task: asyncio.Task[None] | None = None

    async def run_once(
        self, agent: str | None = None, now: datetime | None = None
    ) -> list[SloStatus]:
        """Evaluate, move the budgets' states, and return the statuses."""
        statuses = await self.evaluator.evaluate(agent, now)
        await self.freeze.update(statuses)
        for status in statuses:
            self._on_status(status)
        return statuses

    async def status(self, agent: str | None = None) -> list[SloStatus]:
        """Evaluate now, each budget's freeze as the store has it (a read: nothing moves)."""
        statuses = await self.evaluator.evaluate(agent)
        stored = await self.freeze.states.all(agent)
        enabled = self.evaluator.settings.freeze.enabled
        for s in statuses:
            record = stored.get((s.agent, s.slo))
            s.frozen = enabled and record is not None and record.state == "exhausted"
        return statuses

    async def start(self) -> None:
        if self._task is None and self.evaluator.objectives:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        every = self.evaluator.settings.evaluate_every_s
        while True:
            try:
                await self.run_once()
            except (SQLAlchemyError, OSError) as exc:  # the store away: try again next time
                log.warning("slo_evaluation_failed", error_type=type(exc).__name__, error=str(exc))
            await asyncio.sleep(every)

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


class SloEventCounter:
    """``guarita_slo_events_total{agent,slo,outcome}`` per record, by the same rules as the
    store's counts; every agent's series start at 0 so that ratios exist before a bad event."""

    def __init__(self, objs: Sequence[Objective], rules: EventRules, counter: Any) -> None:
        self._rules = rules
        self._by_agent: dict[str, list[tuple[Objective, Mapping[str, Any]]]] = {}
        for o in objs:
            children = {out: counter.labels(o.agent, o.slo, out) for out in ("good", "bad")}
            self._by_agent.setdefault(o.agent, []).append((o, children))

    def __call__(self, row: Mapping[str, Any]) -> None:
        for objective, children in self._by_agent.get(row.get("agent") or "", ()):
            outcome = self._rules.outcome(objective, row)
            if outcome is not None:
                children[outcome].inc()


def build(
    settings: Any, db: Database, metrics: Any, *, audit: Audit, publish: Publish
) -> tuple[SloService, SloEventCounter]:
    """The service (with its freeze) and the per-record counter, as the Runtime wires them."""
    evaluator = SloEvaluator(settings, db)
    m = metrics
    freeze = DeployFreeze(
        settings.slo, SloStates(db), evaluator.objectives, audit=audit, publish=publish,
        on_transition=lambda agent, slo, state: m.slo_budget_transitions.labels(
            agent, slo, state).inc(),
        on_refusal=lambda agent, slo: m.deploy_freeze_refusals.labels(agent, slo).inc(),
    )  # fmt: skip

    def gauge(status: SloStatus) -> None:
        m.deploy_frozen.labels(status.agent, status.slo).set(1 if status.frozen else 0)
        m.slo_budget_remaining.labels(status.agent, status.slo).set(status.remaining)

    service = SloService(evaluator, freeze, on_status=gauge)
    counter = SloEventCounter(evaluator.objectives, evaluator.rules, m.slo_events)
    return service, counter


__all__ = ["BudgetRecord", "DeployFreeze", "SloEvaluator", "SloEventCounter", "SloService"]
