"""Budgets in USD: a call holds its maximum cost at admission and settles its real cost;
concurrent calls never overspend by more than one call's maximum; alerts fire once per
threshold and period; an exhausted budget refuses with 429 ``insufficient_quota``."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from guarita.errors import BudgetExceeded
from guarita.pipeline import compose
from guarita.settings import Budget, BudgetSettings, LimitSettings, TierLimits
from guarita.state import Limit
from guarita.state.memory import MemorySharedState
from guarita.telemetry.prices import Price
from guarita.traffic.alerts import BudgetAlerts
from guarita.traffic.ratelimit import RateLimits, estimate_prompt_tokens
from guarita.types import Call, Completion, Reply, Usage
from tests.traffic.test_ratelimit import call

PRICE = Price(10.0, 90.0)  # $ per 1M tokens: a max_tokens of 500 costs at most $0.045...


def limits_with(
    state: MemorySharedState, budgets: BudgetSettings | None = None, **tier: Any
) -> tuple[RateLimits, list[tuple[str, dict[str, Any]]]]:
    published: list[tuple[str, dict[str, Any]]] = []
    settings = LimitSettings(tiers={"t": TierLimits(**tier)}, budgets=budgets or BudgetSettings())
    alerts = BudgetAlerts(
        state,
        thresholds=settings.budgets.alert_thresholds,
        publish=lambda kind, data: published.append((kind, data)),
        count=lambda budget, share: None,
    )
    stage = RateLimits(state, settings, max_deadline_s=60, prices={"m": PRICE}, alerts=alerts)
    return stage, published


def priced(usage: Usage) -> Any:
    async def answer(c: Call) -> Reply:
        await asyncio.sleep(random.random() / 100)  # calls overlap
        reply = Reply.complete("p", Completion(body={}, usage=usage, model="m"))
        reply.cost_usd = PRICE.cost(usage)  # what Accounting would say
        return reply

    return answer


def max_cost(c: Call, room: int) -> float:
    return PRICE.cost(Usage(estimate_prompt_tokens(c), room))


async def test_concurrent_calls_never_overspend_a_daily_budget() -> None:
    state = MemorySharedState()
    stage, _ = limits_with(state, daily_budget_usd=1.0)
    pipeline = compose([stage], priced(Usage(100, 400)))
    calls = [call(max_tokens=500) for _ in range(50)]
    results = await asyncio.gather(*(pipeline(c) for c in calls), return_exceptions=True)
    await stage.aclose()
    admitted = [r for r in results if isinstance(r, Reply)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(admitted) + len(refused) == 50 and refused
    worst = max_cost(calls[0], 500)
    (day,) = await state.usage([Limit("{key:k1}:usd-day", 1.0, "day")])
    assert day.held == 0  # reserved minus settled is back to 0
    assert day.used == pytest.approx(len(admitted) * PRICE.cost(Usage(100, 400)))
    assert day.used <= 1.0 + worst
    error = refused[0]
    assert error.status_code == 429 and error.code == "insufficient_quota"
    assert error.error_type == "insufficient_quota" and "daily budget" in error.message


async def test_the_record_says_what_was_held() -> None:
    state = MemorySharedState()
    stage, _ = limits_with(state, daily_budget_usd=1.0)
    held = call(max_tokens=500)
    await compose([stage], priced(Usage(100, 400)))(held)
    assert (
        held.record.reserved_usd == pytest.approx(max_cost(held, 500))
        and held.record.reserved_usd > 0
    )
    unbudgeted = call(max_tokens=500)
    await compose([limits_with(MemorySharedState())[0]], priced(Usage(1, 1)))(unbudgeted)
    assert unbudgeted.record.reserved_usd == 0


async def test_agent_and_total_budgets_apply_with_the_keys() -> None:
    state = MemorySharedState()
    budgets = BudgetSettings(total=Budget(monthly_usd=0.05))
    stage, _ = limits_with(state, budgets)
    pipeline = compose([stage], priced(Usage(100, 400)))
    await pipeline(call(max_tokens=100))  # at most ~$0.009, costs $0.037
    with pytest.raises(BudgetExceeded) as caught:
        for _ in range(5):
            await pipeline(call(max_tokens=100))
    assert "monthly budget" in caught.value.message and "the total" in caught.value.message


async def test_alerts_fire_once_per_threshold_and_period() -> None:
    state = MemorySharedState()
    stage, published = limits_with(state, daily_budget_usd=0.2)
    pipeline = compose([stage], priced(Usage(1000, 1000)))  # $0.1 a call
    for _ in range(2):
        await pipeline(call(max_tokens=10))  # the hold is small; the settled cost is not
    with pytest.raises(BudgetExceeded):
        for _ in range(3):
            await pipeline(call(max_tokens=10))
    await stage.aclose()
    thresholds = [data["threshold"] for kind, data in published]
    assert sorted(thresholds) == [0.5, 0.8, 1.0]
    assert all(kind == "guarita.budget.threshold" for kind, _ in published)
    assert published[0][1]["budget"] == "key:k1" and published[0][1]["period"] == "day"


async def test_a_second_process_does_not_alert_again() -> None:
    state = MemorySharedState()  # shared by both "processes", as Redis would be
    first, seen_first = limits_with(state, daily_budget_usd=0.2)
    second, seen_second = limits_with(state, daily_budget_usd=0.2)
    for stage in (first, second):
        await compose([stage], priced(Usage(1000, 1000)))(call(max_tokens=10))
    with pytest.raises(BudgetExceeded):  # used up: refused, and the 100 % alert is due
        await compose([second], priced(Usage(0, 0)))(call(max_tokens=10))
    await first.aclose()
    await second.aclose()
    all_thresholds = [d["threshold"] for _, d in seen_first + seen_second]
    assert sorted(all_thresholds) == [0.5, 0.8, 1.0]  # each once, across both


async def test_a_failed_call_costs_nothing() -> None:
    state = MemorySharedState()
    stage, _ = limits_with(state, daily_budget_usd=1.0)

    async def failing(c: Call) -> Reply:
        raise RuntimeError("upstream gone")

    with pytest.raises(RuntimeError):
        await compose([stage], failing)(call(max_tokens=500))
    await stage.aclose()
    (day,) = await state.usage([Limit("{key:k1}:usd-day", 1.0, "day")])
    assert (day.used, day.held) == (0, 0)


def test_bad_budgets_fail_at_start_naming_the_field() -> None:
    from guarita.errors import ConfigError
    from guarita.settings import load_settings

    with pytest.raises(ConfigError) as caught:
        load_settings(limits={"budgets": {"total": {"daily_usd": -1}}})
    assert "limits.budgets.total.daily_usd" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings(limits={"budgets": {"alert_thresholds": [1.5]}})
    assert "alert_thresholds" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings(limits={"budgets": {"agents": {"ghost": {"daily_usd": 1}}}})
    assert "limits.budgets.agents.ghost" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings(limits={"tiers": {"x": {"daily_budget_usd": "lots"}}})
    assert "limits.tiers.x.daily_budget_usd" in str(caught.value)
