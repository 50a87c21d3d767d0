"""Economy mode: a used-up budget with ``action: economy`` switches its calls to the
cheaper model with halved limits instead of refusing them, tells the other processes,
ends with the period or when an operator lifts it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guarita.errors import ConfigError, RateLimitExceeded
from guarita.pipeline import compose
from guarita.settings import (
    BudgetSettings,
    EconomySettings,
    LimitSettings,
    TierLimits,
    load_settings,
)
from guarita.state import Limit
from guarita.state.memory import MemorySharedState
from guarita.telemetry.prices import Price
from guarita.traffic.economy import EconomyMode
from guarita.traffic.ratelimit import RateLimits
from guarita.types import Call, Completion, Reply, Usage
from tests.traffic.test_ratelimit import call

PRICES = {"m": Price(100.0, 100.0), "cheap": Price(1.0, 1.0)}


async def stage(state: MemorySharedState, **tier: Any) -> tuple[RateLimits, EconomyMode]:
    settings = LimitSettings(
        tiers={"t": TierLimits(**tier)},
        budgets=BudgetSettings(action="economy"),
        economy=EconomySettings(models={"m": "cheap"}),
    )
    economy = EconomyMode(settings.economy, state)
    await economy.start()
    limits = RateLimits(state, settings, max_deadline_s=60, prices=PRICES, economy=economy)
    return limits, economy


async def answer(c: Call) -> Reply:
    usage = Usage(500, 500)
    reply = Reply.complete("p", Completion(body={}, usage=usage, model=c.model))
    reply.cost_usd = PRICES[c.model].cost(usage)
    reply.served_by = c.model
    return reply


async def test_a_used_up_budget_goes_on_in_economy_mode() -> None:
    state = MemorySharedState()
    limits, economy = await stage(state, daily_budget_usd=0.25, requests_per_minute=10)
    pipeline = compose([limits], answer)
    served = []
    for _ in range(5):
        c = call(max_tokens=10)
        served.append(((await pipeline(c)).served_by, c.response_headers.get("x-guarita-economy")))
    # $0.1 a call: three fit in $0.25 (each held at its small maximum), then economy
    assert served == [("m", None)] * 3 + [("cheap", "key:k1")] * 2
    assert economy.report()["economy"].keys() == {"key:k1"}
    with pytest.raises(RateLimitExceeded) as caught:  # halved: 5 requests a minute, not 10
        await pipeline(call(max_tokens=10))
    assert "limit 5" in caught.value.message
    await limits.aclose()
    await economy.aclose()


async def test_other_processes_learn_it_and_an_operator_lifts_it() -> None:
    state = MemorySharedState()  # what Redis is to several processes
    first, first_economy = await stage(state, daily_budget_usd=0.15)
    second, second_economy = await stage(state, daily_budget_usd=0.15)
    for _ in range(3):
        await compose([first], answer)(call(max_tokens=10))
    assert "key:k1" in first_economy.report()["economy"]

    async def told() -> bool:
        return "key:k1" in second_economy.report()["economy"]

    for _ in range(100):
        if await told():
            break
        await asyncio.sleep(0.01)
    c = call(max_tokens=10)
    assert (await compose([second], answer)(c)).served_by == "cheap"

    await second_economy.lift("key:k1", until=4_000_000_000)
    for _ in range(100):
        if "key:k1" in first_economy.report()["lifted"]:
            break
        await asyncio.sleep(0.01)
    lifted = call(max_tokens=10)
    assert (await compose([first], answer)(lifted)).served_by == "m"
    assert "x-guarita-economy" not in lifted.response_headers
    await first.aclose()
    (day,) = await state.usage([Limit("{key:k1}:usd-day", 0.15, "day")])
    assert day.used > 0.15  # lifted: the budget still counts, it no longer refuses
    for closing in (second, first_economy, second_economy):
        await closing.aclose()


async def test_economy_mode_ends_with_its_period() -> None:
    now = [1_000_000.0]
    economy = EconomyMode(EconomySettings(), MemorySharedState(), clock=lambda: now[0])
    await economy.enter("total", until=now[0] + 60)
    assert economy.mode_for(call())[0] == "total"
    now[0] += 61
    assert economy.mode_for(call()) == (None, set())


def test_economy_models_must_exist() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            models={"m": {"provider": "scripted"}},
            agents={"a": {"model": "m"}},
            default_agent="a",
            limits={"economy": {"models": {"m": "nope"}}},
        )
    assert "limits.economy.models.m" in str(caught.value)
