"""Settings of traffic and cost control (docs/limits.md): tiers, budgets, economy mode."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, field_validator

from guarita.settings_base import Strict as _Strict


class TierLimits(_Strict):
    """What a tier (or one key, overriding its tier) may use; unset means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    requests_per_day: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Estimated at admission (prompt + max_tokens), settled."
    )
    concurrent_requests: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Largest max_tokens a request may ask (400 above it); applied when absent.",
    )
    models: list[str] | None = Field(
        default=None, description="Models and agents the tier may call; unset: all."
    )
    daily_budget_usd: float | None = Field(default=None, gt=0, description="Per key, UTC day.")
    monthly_budget_usd: float | None = Field(
        default=None, gt=0, description="Per key, UTC calendar month."
    )

    def merged(self, overrides: TierLimits | None) -> TierLimits:
        """This tier with a key's own limits on top (a key sets only what it overrides)."""
        if overrides is None:
            return self
        return self.model_copy(update=overrides.model_dump(exclude_unset=True))


def _default_tiers() -> dict[str, TierLimits]:
    # the source document's tiers: free 10 requests/day and 1,000 tokens/request, pro
    # 1,000/day and 4,000, enterprise unlimited and 8,000; admin keys are for operators
    return {
        "free": TierLimits(requests_per_day=10, max_tokens=1000),
        "pro": TierLimits(requests_per_day=1000, max_tokens=4000),
        "enterprise": TierLimits(max_tokens=8000),
        "admin": TierLimits(),
    }


class Budget(_Strict):
    daily_usd: float | None = Field(default=None, gt=0, description="UTC day.")
    monthly_usd: float | None = Field(default=None, gt=0, description="UTC calendar month.")


class BudgetSettings(_Strict):
    """Spend limits beyond each key's own (``daily_budget_usd`` of a tier or key)."""

    total: Budget = Field(default_factory=Budget, description="All callers together.")
    agents: dict[str, Budget] = Field(default_factory=dict, description="Per agent.")
    alert_thresholds: tuple[float, ...] = Field(
        default=(0.5, 0.8, 1.0),
        description="Shares of a budget at which to alert, once per budget and period.",
    )
    webhook_url: str | None = Field(
        default=None, description="Alerts are also POSTed here as JSON."
    )
    action: Literal["block", "economy"] = Field(
        default="block",
        description="At 100 %: refuse (429 insufficient_quota), or go on in economy mode.",
    )

    @field_validator("alert_thresholds")
    @classmethod
    def _shares(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < share <= 1 for share in value):
            raise ValueError("each threshold must be a share of the budget, above 0 and at most 1")
        return tuple(sorted(set(value)))


class EconomySettings(_Strict):
    """What economy mode changes, for the calls charged to a budget that is used up."""

    models: dict[str, str] = Field(
        default_factory=dict, description="A cheaper model for a model (both configured)."
    )
    limit_factor: float = Field(
        default=0.5, gt=0, le=1, description="Request, token and concurrency limits times this."
    )
    cache_ttl_factor: float = Field(
        default=2.0, ge=1, description="Response cache TTLs times this (the cache stage)."
    )


class LimitSettings(_Strict):
    tiers: dict[str, TierLimits] = Field(
        default_factory=_default_tiers,
        description="Tiers by name; the ones given replace the defaults of the same name.",
    )
    per_ip_per_minute: int | None = Field(
        default=None, ge=1, description="Requests per client address and minute on chat routes."
    )
    per_ip_endpoints: tuple[Literal["chat.completions", "api.chat", "embeddings"], ...] = (
        "chat.completions",
        "api.chat",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) whose X-Forwarded-For is believed.",
    )
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    economy: EconomySettings = Field(default_factory=EconomySettings)
    hold_margin_s: float = Field(
        default=30.0,
        gt=0,
        description="A call's reservation outlives its deadline by this much, then expires "
        "by itself (a process killed mid-call releases its holds).",
    )

    @field_validator("tiers", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**_default_tiers(), **value}
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or network") from None
        return value
