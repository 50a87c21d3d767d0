"""What a breaker costs per call, in-process and on Redis.

Times ``apply`` on a closed breaker: ``acquire`` then ``success``, one pair after the other
(what every call to a deployment does), through ``SharedBreakerStore`` on the in-process
state and on Redis. Reports the calling process's CPU time per ``apply``
(``time.process_time``: what the gateway pays) and the wall time. With the default
``refresh_s`` (0.25 s) the hot path reads Redis at most four times a second; the row with
``refresh_s`` 0 reads it on every call (the cost without the cache, for comparison).

    .venv/bin/python bench/breaker_store.py [--pairs 20000] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from typing import Any

from guarita.resilience.breaker import BreakerPolicy, SharedBreakerStore
from guarita.state import SharedState
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState

POLICY = BreakerPolicy()


async def pairs_of(store: SharedBreakerStore, name: str, pairs: int) -> None:
    for _ in range(pairs):
        assert (await store.apply(name, "acquire", POLICY)).allowed
        await store.apply(name, "success", POLICY)


async def measure(state: SharedState, pairs: int, refresh_s: float) -> tuple[float, float]:
    """CPU and wall µs per ``apply``, over ``pairs`` acquire + success pairs."""
    store = SharedBreakerStore(state, refresh_s=refresh_s)
    await store.start()
    try:
        name = f"bench-{secrets.token_hex(3)}"
        await pairs_of(store, name, min(pairs, 1000))  # warm-up: connections, caches
        cpu, wall = time.process_time(), time.perf_counter()
        await pairs_of(store, name, pairs)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await store.aclose()
    return cpu / pairs / 2 * 1e6, wall / pairs / 2 * 1e6


async def main(pairs: int, redis_url: str) -> None:
    import redis.asyncio as redis

    prefix = f"guarita-bench-breaker-{secrets.token_hex(4)}:"
    client: Any = redis.from_url(redis_url)
    rows = []
    try:
        cases: list[tuple[str, SharedState, float]] = [
            ("memory", MemorySharedState(), 0.25),
            ("redis", RedisSharedState(client, prefix=prefix), 0.25),
            ("redis", RedisSharedState(client, prefix=prefix), 0.0),
        ]
        for name, state, refresh_s in cases:
            rows.append((name, refresh_s, *await measure(state, pairs, refresh_s)))
    finally:
        async for key in client.scan_iter(match=prefix + "*"):
            await client.delete(key)
        await client.aclose()
    print(f"apply on a closed breaker, {pairs} acquire + success pairs per row")
    print("| state | refresh_s | CPU µs / apply (this process) | wall µs / apply |")
    print("|---|---:|---:|---:|")
    for name, refresh_s, cpu_us, wall_us in rows:
        print(f"| {name} | {refresh_s} | {cpu_us:.1f} | {wall_us:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument(
        "--redis", default=os.environ.get("GUARITA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    options = parser.parse_args()
    asyncio.run(main(options.pairs, options.redis))
