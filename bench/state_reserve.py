"""What a reserve + settle costs, in-process and on Redis.

Times ``reserve`` then ``settle`` of one reservation over three limits (requests and
tokens per minute, USD per day — what one chat call will reserve), one after the other
(the latency a request sees) and 100 at a time (the throughput of one process). Reports
the calling process's CPU time per pair (``time.process_time``: what the gateway pays),
the wall time per pair, and the time Redis spent in the scripts per pair (from ``INFO
commandstats``, server-wide: run it on a quiet Redis).

    .venv/bin/python bench/state_reserve.py [--pairs 5000] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from typing import Any

from guarita.state import Limit, SharedState
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState

LIMITS = [
    Limit("{key:bench}:rpm", None, "minute"),
    Limit("{key:bench}:tpm", None, "minute", amount=1500),
    Limit("{key:bench}:usd", None, "day", amount=0.02),
]
ACTUAL = {"{key:bench}:tpm": 530, "{key:bench}:usd": 0.0061}


async def pair(state: SharedState, reservation_id: str) -> None:
    admission = await state.reserve(reservation_id, LIMITS, ttl_s=60)
    assert admission.allowed
    assert await state.settle(reservation_id, ACTUAL)


async def measure(state: SharedState, pairs: int, concurrency: int) -> tuple[float, float]:
    """CPU and wall µs per reserve + settle pair, ``concurrency`` pairs in flight."""
    run = secrets.token_hex(3)
    for i in range(min(pairs, 500)):  # warm-up: connections, scripts, caches
        await pair(state, f"warm-{run}-{i}")
    cpu, wall = time.process_time(), time.perf_counter()
    if concurrency == 1:
        for i in range(pairs):
            await pair(state, f"{run}-{i}")
    else:
        for start in range(0, pairs, concurrency):
            batch = range(start, min(start + concurrency, pairs))
            await asyncio.gather(*(pair(state, f"{run}-{i}") for i in batch))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / pairs * 1e6, wall / pairs * 1e6


async def script_usec(client: Any) -> tuple[int, int]:
    """Redis's own count of EVALSHA calls and the µs it spent in them."""
    stats = await client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(evalsha["calls"]), int(evalsha["usec"])


async def main(pairs: int, redis_url: str) -> None:
    import redis.asyncio as redis

    prefix = f"guarita-bench-state-{secrets.token_hex(4)}:"
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=32)
    client: Any = redis.Redis(connection_pool=pool)
    rows = []
    try:
        states: list[tuple[str, SharedState]] = [
            ("memory", MemorySharedState()),
            ("redis", RedisSharedState(client, prefix=prefix)),
        ]
        for name, state in states:
            for concurrency in (1, 100):
                calls, usec = await script_usec(client)
                cpu_us, wall_us = await measure(state, pairs, concurrency)
                calls_after, usec_after = await script_usec(client)
                server_us = (usec_after - usec) / pairs if calls_after > calls else None
                rows.append((name, concurrency, cpu_us, wall_us, server_us))
    finally:
        async for key in client.scan_iter(match=prefix + "*"):
            await client.delete(key)
        await client.aclose(close_connection_pool=True)
    print(f"reserve + settle over {len(LIMITS)} limits, {pairs} pairs per row")
    print("| state | in flight | CPU µs / pair (this process) | wall µs / pair | Redis µs / pair |")
    print("|---|---:|---:|---:|---:|")
    for name, concurrency, cpu_us, wall_us, server_us in rows:
        server = "-" if server_us is None else f"{server_us:.1f}"
        print(f"| {name} | {concurrency} | {cpu_us:.1f} | {wall_us:.1f} | {server} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument(
        "--redis", default=os.environ.get("GUARITA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    options = parser.parse_args()
    asyncio.run(main(options.pairs, options.redis))
