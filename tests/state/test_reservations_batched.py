"""``settle_soon``: a settlement without a round trip of its own. In process it applies at
once; on Redis it goes with the next ``reserve`` of the process (in the same script) or
after ``settle_delay_s``, once by reservation id, retried on errors, sent at ``aclose``;
and across real OS processes on one Redis, what they settle this way sums exactly.

The children are this module run as a script (``python -m
tests.state.test_reservations_batched spend PREFIX COUNT``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from guarita.state import Limit
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState
from tests.helpers import REDIS_URL, ROOT, inside_one_minute

TOKENS = Limit("{batch}:tpm", 1_000_000, "minute", amount=100)
BUDGET = Limit("{batch}:usd", 5.0, "day", amount=0.01)
INFLIGHT = Limit("{batch}:inflight", 1000, "concurrent")


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    pool = redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=32)
    shared = redis.Redis(connection_pool=pool)
    yield shared
    await shared.aclose(close_connection_pool=True)


async def counters(state: Any) -> list[tuple[float, float]]:
    return [(c.used, c.held) for c in await state.usage([TOKENS, BUDGET, INFLIGHT])]


async def test_in_process_it_applies_at_once() -> None:
    state = MemorySharedState()
    assert (await state.reserve("r1", [TOKENS, BUDGET, INFLIGHT], ttl_s=60)).allowed
    state.settle_soon("r1", {TOKENS.counter: 42, BUDGET.counter: 0.002})
    assert await counters(state) == [(42, 0), (0.002, 0), (0, 0)]
    state.settle_soon("r1", {TOKENS.counter: 42})  # once by id
    assert await counters(state) == [(42, 0), (0.002, 0), (0, 0)]
    await state.flush()


async def test_the_next_reserve_carries_it(client: Any, redis_prefix: str) -> None:
    state = RedisSharedState(client, prefix=redis_prefix, settle_delay_s=60)  # no timer
    assert (await state.reserve("r1", [TOKENS, BUDGET, INFLIGHT], ttl_s=60)).allowed
    state.settle_soon("r1", {TOKENS.counter: 42, BUDGET.counter: 0.002})
    assert await counters(state) == [(0, 100), (0, 0.01), (0, 1)]  # waiting: still held
    admission = await state.reserve("r2", [TOKENS, BUDGET, INFLIGHT], ttl_s=60)
    # r1 was settled in the same script, before r2's check: r2 sees it
    assert [(c.used, c.held) for c in admission.counters] == [(42, 100), (0.002, 0.01), (0, 1)]
    state.settle_soon("r2")  # the amounts reserved
    state.settle_soon("r1", {TOKENS.counter: 1})  # settled already: changes nothing
    await state.flush()
    assert await counters(state) == [(142, 0), (0.012, 0), (0, 0)]
    assert not await state.settle("r2")


async def test_without_a_reserve_it_is_sent_after_the_delay(client: Any, redis_prefix: str) -> None:
    state = RedisSharedState(client, prefix=redis_prefix, settle_delay_s=0.01)
    for i in range(3):
        assert (await state.reserve(f"r{i}", [TOKENS, INFLIGHT], ttl_s=60)).allowed
    for i in range(3):
        state.settle_soon(f"r{i}", {TOKENS.counter: 10})  # one send for the three
    deadline = time.monotonic() + 5
    while await counters(state) != [(30, 0), (0, 0), (0, 0)]:
        assert time.monotonic() < deadline, await counters(state)
        await asyncio.sleep(0.01)


async def test_a_failed_send_is_retried_and_applied_once(client: Any, redis_prefix: str) -> None:
    state = RedisSharedState(client, prefix=redis_prefix, settle_delay_s=60)
    assert (await state.reserve("r1", [TOKENS, INFLIGHT], ttl_s=60)).allowed
    state.settle_soon("r1", {TOKENS.counter: 7})
    script = state._reserve
    calls = 0

    async def flaky(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the script runs, but its answer is lost
            await script(**kwargs)
            raise ConnectionError("reply lost")
        return await script(**kwargs)

    state._reserve = flaky  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await state.reserve("r2", [TOKENS, INFLIGHT], ttl_s=60)
    assert (await state.reserve("r3", [TOKENS, INFLIGHT], ttl_s=60)).allowed  # carries r1 again
    await state.flush()
    (tokens, inflight) = await state.usage([TOKENS, INFLIGHT])
    assert tokens.used == 7  # r1 once, though sent twice
    assert tokens.held == 200 and inflight.held == 2  # r2 (admitted, its answer lost) and r3


async def test_aclose_sends_what_waits(client: Any, redis_prefix: str) -> None:
    state = RedisSharedState(client, prefix=redis_prefix, settle_delay_s=60)
    assert (await state.reserve("r1", [TOKENS], ttl_s=60)).allowed
    state.settle_soon("r1", {TOKENS.counter: 5})
    await state.aclose()
    assert await counters(RedisSharedState(client, prefix=redis_prefix)) == [
        (5, 0),
        (0, 0),
        (0, 0),
    ]


@pytest.mark.slow
async def test_settlements_from_four_processes_sum_exactly(redis_prefix: str) -> None:
    """4 processes x 300 concurrent calls, each reserving tokens and a $5.00 budget at most
    $0.01 a call and settling with ``settle_soon`` at a random real cost: the budget never
    admits more than it holds, the spend is exactly what the processes settled, and
    nothing is left held. The tokens are a per-minute counter: the run is started inside
    one minute, and their sum is only checked if it also ended there."""
    inside_one_minute(45)
    minute = int(time.time() // 60)
    child_args = [sys.executable, "-m", "tests.state.test_reservations_batched", "spend"]
    pipe = asyncio.subprocess.PIPE
    children = [
        await asyncio.create_subprocess_exec(
            *child_args, redis_prefix, "300", cwd=ROOT, stdout=pipe, stderr=pipe
        )
        for _ in range(4)
    ]
    results = []
    for child in children:
        async with asyncio.timeout(120):
            out, err = await child.communicate()
        assert child.returncode == 0, err.decode()
        results.append(json.loads(out))
    client = redis.from_url(REDIS_URL)
    try:
        state = RedisSharedState(client, prefix=redis_prefix)
        tokens, budget, inflight = await state.usage([TOKENS, BUDGET, INFLIGHT])
    finally:
        await client.aclose()
    admitted = sum(r["admitted"] for r in results)
    assert admitted >= 500  # $5.00 at $0.01 held per call: at least 500 fit
    assert budget.used == pytest.approx(sum(r["usd"] for r in results), abs=1e-9)
    if int(time.time() // 60) == minute:
        assert tokens.used == sum(r["tokens"] for r in results)
    else:  # the window turned during the run: the new one holds only the later settlements
        assert tokens.used <= sum(r["tokens"] for r in results)
    assert budget.used <= 5.0 and (tokens.held, budget.held, inflight.held) == (0, 0, 0)


# -- the children ------------------------------------------------------------------------


async def spend(prefix: str, count: int) -> None:
    """``count`` calls at once: reserve, a short wait, ``settle_soon`` at a random cost."""
    state = RedisSharedState.from_url(REDIS_URL, prefix=prefix, max_connections=16)
    totals = {"admitted": 0, "usd": 0.0, "tokens": 0}

    async def one(i: int) -> None:
        rid = f"{os.getpid()}-{i}"
        admission = await state.reserve(rid, [TOKENS, BUDGET, INFLIGHT], ttl_s=60)
        if not admission.allowed:
            return
        await asyncio.sleep(random.random() / 20)
        usd, tokens = random.randint(1, 10_000) / 1_000_000, random.randint(1, 100)
        totals["admitted"] += 1
        totals["usd"] += usd
        totals["tokens"] += tokens
        state.settle_soon(rid, {BUDGET.counter: usd, TOKENS.counter: tokens})

    await asyncio.gather(*(one(i) for i in range(count)))
    await state.aclose()  # sends what still waits
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    asyncio.run(spend(sys.argv[2], int(sys.argv[3])))


async def test_reserves_asked_at_once_share_one_script(client: Any, redis_prefix: str) -> None:
    """Fifty reserves asked in the same loop iteration go in one script, each all or none
    on its own and in order: a capacity of 30 admits exactly the first 30."""
    state = RedisSharedState(client, prefix=redis_prefix)
    scripts = 0
    original = state._reserve

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal scripts
        scripts += 1
        return await original(*args, **kwargs)

    state._reserve = counting  # type: ignore[method-assign]
    seats = Limit("{batch}:seats", 30, "concurrent")
    answers = await asyncio.gather(
        *(state.reserve(f"at-once-{i}", [seats, TOKENS], ttl_s=60) for i in range(50))
    )
    assert scripts == 1
    assert [a.allowed for a in answers] == [True] * 30 + [False] * 20
    assert {a.refused_by for a in answers[30:]} == {seats.counter}
    assert [c.held for c in await state.usage([seats, TOKENS])] == [30, 30 * 100]
    await state.aclose()


async def test_a_caller_gone_before_its_answer_holds_nothing(
    client: Any, redis_prefix: str
) -> None:
    """A reserve whose caller is cancelled while the script runs is released when the
    answer comes, so a client that went away leaves no hold behind."""
    state = RedisSharedState(client, prefix=redis_prefix)
    asked = asyncio.ensure_future(state.reserve("gone", [INFLIGHT, TOKENS], ttl_s=600))
    await asyncio.sleep(0)  # asked: the script is scheduled
    await asyncio.sleep(0)  # and sent
    asked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asked
    await state.flush()  # the answer came back, and its release went out
    assert [c.held for c in await state.usage([INFLIGHT, TOKENS])] == [0, 0]
    assert (await state.reserve("gone", [INFLIGHT], ttl_s=1)).allowed  # the id is free again
    await state.aclose()
