"""Settings of service level objectives and error budgets (docs/slo.md): per agent targets
for availability, quality and consistency over a period, what counts as a good event, the
burn-rate alert windows of the Google SRE workbook, and the deploy freeze.

Durations are Prometheus durations (``5m``, ``1h``, ``3d``), because the same values are
written into the generated Prometheus rules.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from guarita.settings_base import Strict as _Strict

SloName = Literal["availability", "quality", "consistency"]
SLO_NAMES: tuple[SloName, ...] = ("availability", "quality", "consistency")
Severity = Literal["page", "ticket"]

_DURATION = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_QUALITY_THRESHOLD = 0.7
"""A record's quality below this is a bad quality event, unless the agent's model has a
``quality.min_score`` (or the SLO its own ``quality_threshold``)."""


def duration_s(duration: str) -> int:
    """Seconds of a Prometheus duration of one unit (``30m``)."""
    match = _DURATION.fullmatch(duration)
    if match is None:
        raise ValueError(f"{duration!r} is not a duration like 5m, 1h or 3d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _check_duration(value: str) -> str:
    duration_s(value)
    return value


class BurnWindow(_Strict):
    """One row of the workbook's table: alert when the error budget burns faster than
    ``burn_rate`` times the sustainable rate over both windows (the long one for
    significance, the short one so the alert stops soon after the burn does)."""

    severity: Severity
    burn_rate: float = Field(gt=0)
    long_window: str
    short_window: str
    for_: str | None = Field(
        default=None,
        alias="for",
        description="Prometheus `for:`; the workbook's multiwindow alerts have none (the "
        "short window already stops a blip from alerting).",
    )

    @field_validator("long_window", "short_window")
    @classmethod
    def _windows_are_durations(cls, value: str) -> str:
        return _check_duration(value)

    @field_validator("for_")
    @classmethod
    def _for_is_a_duration(cls, value: str | None) -> str | None:
        return None if value is None else _check_duration(value)

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnWindow:
        if duration_s(self.short_window) >= duration_s(self.long_window):
            raise ValueError("short_window must be shorter than long_window")
        return self


def _workbook_windows() -> tuple[BurnWindow, ...]:
    return (
        BurnWindow(severity="page", burn_rate=14.4, long_window="1h", short_window="5m"),
        BurnWindow(severity="page", burn_rate=6, long_window="6h", short_window="30m"),
        BurnWindow(severity="ticket", burn_rate=1, long_window="3d", short_window="6h"),
    )


class SloTargets(_Strict):
    """Targets of one agent (``slo.defaults``, or an ``slo.agents`` entry, whose fields that
    are set replace the defaults'); a target of ``null`` turns that SLO off."""

    availability: float | None = Field(default=0.99, gt=0, lt=1)
    quality: float | None = Field(default=0.95, gt=0, lt=1)
    consistency: float | None = Field(default=0.90, gt=0, lt=1)
    quality_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="A record of quality below it is bad; unset: the model's "
        "quality.min_score, else 0.7.",
    )
    consistency_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="A record of consistency below it is bad; unset: the agent's "
        "consistency.threshold, else 0.9.",
    )


class FreezeSettings(_Strict):
    """The deploy freeze: rollouts asked about an agent whose budget is used up."""

    enabled: bool = True
    warn_consumed: float = Field(
        default=0.8, gt=0, lt=1, description="Share of a budget consumed that warns (an event)."
    )
    min_events: int = Field(
        default=100,
        ge=1,
        description="Events in the period before a budget can freeze or warn (one failure of "
        "the first ten calls would otherwise use up a 99% budget).",
    )
    exempt_change_types: tuple[str, ...] = Field(
        default=("security_hotfix",), description="Change types a freeze lets through."
    )


class SloSettings(_Strict):
    """``Settings.slo``."""

    enabled: bool = True
    period: str = Field(default="30d", description="The period a budget covers (rolling).")
    defaults: SloTargets = SloTargets()
    agents: dict[str, SloTargets] = Field(
        default_factory=dict, description="Per agent, the targets that differ from defaults."
    )
    windows: tuple[BurnWindow, ...] = Field(
        default_factory=_workbook_windows,
        description="Multiwindow, multi-burn-rate alerts (the SRE workbook's by default).",
    )
    bad_status_codes: tuple[int, ...] = Field(
        default=(408,),
        description="Client-error statuses that still count against availability (every "
        "5xx does; other 4xx are the caller's and count as good).",
    )
    excluded_status_codes: tuple[int, ...] = Field(
        default=(499,), description="Statuses not counted at all (499: the caller went away)."
    )
    evaluate_every_s: float = Field(
        default=60.0, gt=0, description="How often each API process evaluates the budgets."
    )
    exhaustion_window: str = Field(
        default="1h", description="The burn rate that the time to exhaustion extrapolates."
    )
    freeze: FreezeSettings = FreezeSettings()

    @field_validator("period", "exhaustion_window")
    @classmethod
    def _durations(cls, value: str) -> str:
        return _check_duration(value)

    @model_validator(mode="after")
    def _windows_fit_the_period(self) -> SloSettings:
        period = duration_s(self.period)
        for window in self.windows:
            if duration_s(window.long_window) > period:
                raise ValueError(f"windows: {window.long_window} is longer than the period")
        if set(self.bad_status_codes) & set(self.excluded_status_codes):
            raise ValueError("a status is either bad or excluded, not both")
        return self

    def targets(self, agent: str) -> SloTargets:
        """The agent's targets: its own entry's fields over the defaults."""
        own = self.agents.get(agent)
        if own is None:
            return self.defaults
        return self.defaults.model_copy(update={f: getattr(own, f) for f in own.model_fields_set})
