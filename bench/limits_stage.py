"""What the rate-limit stage costs per call, in process: the bench profiles of
``run_gateway.py --limits`` (every rate limit of the key and its daily and monthly budget:
six counters reserved and settled per call) and ``--limits all`` (a daily and a monthly
budget of its agent and of the total too: ten counters) around a terminal that answers at
once, on the in-process state and on Redis.

Reports ``time.process_time`` per call over ``--calls`` calls, 50 at a time (what the
gateway pays at 50 connections; the Redis server's own CPU is not counted), the same with
no limits at all (the stage's floor), and the difference.

    PYTHONPATH=src .venv/bin/python bench/limits_stage.py [--calls 20000] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from typing import Any

from guarita.pipeline import compose
from guarita.settings import Budget, BudgetSettings, LimitSettings, TierLimits
from guarita.state import Reservations
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState
from guarita.telemetry.prices import Price
from guarita.traffic.ratelimit import RateLimits
from guarita.types import Call, Caller, Completion, Reply, Usage

HUGE = 10_000_000
LIMITS = TierLimits(
    requests_per_minute=HUGE, requests_per_day=HUGE * 10, tokens_per_minute=HUGE * 100,
    concurrent_requests=100_000, max_tokens=4000, daily_budget_usd=1e6, monthly_budget_usd=1e7,
)  # fmt: skip
BUDGETS = BudgetSettings(
    total=Budget(daily_usd=1e6, monthly_usd=1e7),
    agents={"bench-agent": Budget(daily_usd=1e6, monthly_usd=1e7)},
)


def make_call(limited: bool) -> Call:
    return Call(
        request_id="r",
        model="bench-model",
        agent="bench-agent",
        body={"messages": [{"role": "user", "content": "Say hello in one short sentence."}]},
        caller=Caller(key_id="bench", name="bench", tier="bench" if limited else "none"),
        endpoint="chat.completions",
        client_ip="127.0.0.1",
    )


async def answer(call: Call) -> Reply:
    reply = Reply.complete("p", Completion(body={}, usage=Usage(21, 9), model="bench-model"))
    reply.cost_usd = 0.000198
    return reply


async def measure(
    state: Reservations, limited: bool, calls: int, concurrency: int, *, everything: bool = True
) -> float:
    """CPU µs per call of the stage (and the terminal), ``concurrency`` calls at a time;
    ``everything``: the agent's and the total budgets too."""
    budgets = BUDGETS if limited and everything else BudgetSettings()
    settings = LimitSettings(tiers={"bench": LIMITS, "none": TierLimits()}, budgets=budgets)
    prices = {"bench-model": Price(input_per_1m=3, output_per_1m=15)}
    stage = RateLimits(state, settings, max_deadline_s=60, prices=prices)
    pipeline = compose([stage], answer)

    async def batch(n: int) -> None:
        await asyncio.gather(*(pipeline(make_call(limited)) for _ in range(n)))

    await batch(500)  # warm-up: connections, scripts, caches
    cpu = time.process_time()
    for start in range(0, calls, concurrency):
        await batch(min(concurrency, calls - start))
    cpu = time.process_time() - cpu
    await stage.aclose()
    return cpu / calls * 1e6


async def main(calls: int, redis_url: str | None) -> None:
    rows: list[tuple[str, float, float, float]] = []
    rows.append(
        ("memory", await measure(MemorySharedState(), False, calls, 50),
         await measure(MemorySharedState(), True, calls, 50, everything=False),
         await measure(MemorySharedState(), True, calls, 50))
    )  # fmt: skip
    if redis_url:
        import redis.asyncio as redis

        pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=64)
        client: Any = redis.Redis(connection_pool=pool)
        prefix = f"guarita-bench-stage-{secrets.token_hex(4)}:"
        try:
            state = RedisSharedState(client, prefix=prefix)
            none = await measure(state, False, calls, 50)
            key = await measure(state, True, calls, 50, everything=False)
            rows.append(("redis", none, key, await measure(state, True, calls, 50)))
        finally:
            async for key in client.scan_iter(match=prefix + "*"):
                await client.delete(key)
            await client.aclose(close_connection_pool=True)
    print(f"rate-limit stage, {calls} calls 50 at a time, CPU µs per call (this process)")
    print("| state | no limits | the key's limits and budgets (6 counters) | the stage's cost "
          "| and its agent's and the total budgets (10) | the stage's cost |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, none, key, everything in rows:
        print(f"| {name} | {none:.1f} | {key:.1f} | {key - none:.1f} | {everything:.1f} "
              f"| {everything - none:.1f} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument(
        "--redis", default=os.environ.get("GUARITA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL ('' to skip Redis)",
    )  # fmt: skip
    options = parser.parse_args()
    asyncio.run(main(options.calls, options.redis or None))
