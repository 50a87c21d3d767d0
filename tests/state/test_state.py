"""The shared-state layer: the same behaviour from the in-process state and from Redis.

Most tests run on a clock the test moves (for Redis, passed to the scripts in place of
``TIME``), so windows and expiries are exact; the ``live_state`` tests run on the real
clocks (Redis's own ``TIME``) and poll with deadlines.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as redis

from guarita.state import UNITS_PER_ONE as UNIT
from guarita.state import Limit, ReservationExists, SharedState
from guarita.state.memory import MemorySharedState, window_bounds
from guarita.state.redis import RedisSharedState
from tests.helpers import REDIS_URL, FakeClock

MINUTE_START = datetime(2025, 3, 14, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MINUTE_START + 10)


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    """A client with a bounded pool: 1,000 concurrent calls wait for one of 32 connections."""
    pool = redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=32)
    client = redis.Redis(connection_pool=pool)
    yield client
    await client.aclose(close_connection_pool=True)


@pytest.fixture
async def redis_prefix(redis_client: Any) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"guarita-test-state-{secrets.token_hex(4)}:"
    yield prefix
    async for key in redis_client.scan_iter(match=prefix + "*"):
        await redis_client.delete(key)


def make_state(
    kind: str, client: Any, prefix: str, clock: Callable[[], float] | None
) -> SharedState:
    if kind == "memory":
        return MemorySharedState(clock=clock) if clock else MemorySharedState()
    return RedisSharedState(client, prefix=prefix, clock=clock)


@pytest.fixture(params=["memory", "redis"])
async def state(
    request: pytest.FixtureRequest, redis_client: Any, redis_prefix: str, clock: FakeClock
) -> AsyncIterator[SharedState]:
    async with make_state(request.param, redis_client, redis_prefix, clock) as shared:
        yield shared


@pytest.fixture(params=["memory", "redis"])
async def live_state(
    request: pytest.FixtureRequest, redis_client: Any, redis_prefix: str
) -> AsyncIterator[SharedState]:
    async with make_state(request.param, redis_client, redis_prefix, None) as shared:
        yield shared


async def eventually(
    check: Callable[[], Any], *, within: float = 5.0, interval: float = 0.02
) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"not true after {within}s")


async def used_and_held(shared: SharedState, limit: Limit) -> tuple[float, float]:
    (counter,) = await shared.usage([limit])
    return counter.used, counter.held


# -- admission ---------------------------------------------------------------------------


async def test_all_or_none_over_several_counters(state: SharedState) -> None:
    wide, narrow = Limit("k:wide", 10, "minute"), Limit("k:narrow", 1, "hour")
    assert (await state.reserve("r1", [wide, narrow], ttl_s=30)).allowed
    refused = await state.reserve("r2", [wide, narrow], ttl_s=30)
    assert not refused.allowed
    assert refused.refused_by == "k:narrow"
    assert refused.retry_after_s == pytest.approx(3590)  # the hour window's end
    assert [c.held for c in refused.counters] == [1, 1]
    assert [await used_and_held(state, lim) for lim in (wide, narrow)] == [(0, 1), (0, 1)]
    assert not await state.settle("r2") and not await state.release("r2")


async def test_amounts_passed_apart_from_the_limits(state: SharedState) -> None:
    """``amounts=`` (whole units, one per limit) holds those instead of the limits' own,
    refuses past the capacity like them, reads back through the lazy counters and the
    share, and is checked before anything is touched."""
    tpm, usd = Limit("k:tpm", 1000, "minute", amount=1), Limit("k:usd", 1.0, "day")
    admission = await state.reserve("r1", [tpm, usd], ttl_s=30, amounts=[600 * UNIT, UNIT // 4])
    assert admission.allowed
    assert admission.counter(0).held == 600 and admission.share(1) == pytest.approx(0.25)
    assert [c.remaining for c in admission.counters] == [400, 0.75]
    refused = await state.reserve("r2", [tpm, usd], ttl_s=30, amounts=[500 * UNIT, 0])
    assert not refused.allowed and refused.refused_by == "k:tpm"
    for bad in ([UNIT], [-1, 0], [2**60, 0]):
        with pytest.raises(ValueError, match="amount"):
            await state.reserve("r3", [tpm, usd], ttl_s=30, amounts=bad)
    assert await state.settle("r1", {"k:tpm": 100})
    assert await used_and_held(state, tpm) == (100, 0)
    assert await used_and_held(state, usd) == (0.25, 0)


async def test_admission_reports_remaining_and_reset(state: SharedState, clock: FakeClock) -> None:
    limits = [Limit("k:rpm", 60, "minute"), Limit("k:tpm", 1000, "minute", amount=250)]
    admission = await state.reserve("r1", limits, ttl_s=30)
    rpm, tpm = admission.counters
    assert admission.allowed and admission.refused_by is None
    assert (rpm.remaining, tpm.remaining) == (59, 750)
    assert rpm.reset_at == MINUTE_START + 60 and rpm.reset_after_s == pytest.approx(50)
    clock.advance(5)
    assert await state.settle("r1", {"k:tpm": 100})
    rpm, tpm = await state.usage(limits)
    assert (rpm.used, rpm.held, tpm.used, tpm.held) == (1, 0, 100, 0)
    assert tpm.remaining == 900 and tpm.reset_after_s == pytest.approx(45)


async def test_exactly_capacity_admitted_under_1000_concurrent_reserves(
    state: SharedState,
) -> None:
    limit = Limit("k:rpm", 60, "minute")
    admissions = await asyncio.gather(
        *(state.reserve(f"r{i}", [limit], ttl_s=30) for i in range(1000))
    )
    assert sum(a.allowed for a in admissions) == 60
    assert await used_and_held(state, limit) == (0, 60)


async def test_budget_in_usd_is_never_overspent_by_concurrent_requests(
    state: SharedState,
) -> None:
    budget = Limit("team:usd:day", 1.00, "day", amount=0.05)
    admissions = await asyncio.gather(
        *(state.reserve(f"r{i}", [budget], ttl_s=60) for i in range(50))
    )
    admitted = [a.reservation_id for a in admissions if a.allowed]
    assert len(admitted) == 20  # 20 x $0.05 fills $1.00 exactly: amounts are integer µ$
    refusal = next(a for a in admissions if not a.allowed)
    assert refusal.refused_by == "team:usd:day" and refusal.counters[0].remaining == 0
    costs = {rid: random.uniform(0, 0.05) for rid in admitted}
    assert all(
        await asyncio.gather(*(state.settle(rid, {budget.counter: c}) for rid, c in costs.items()))
    )
    used, held = await used_and_held(state, budget)
    assert held == 0
    assert used == pytest.approx(sum(costs.values()), abs=1e-5)
    assert used <= 1.00 + budget.amount


async def test_an_amount_larger_than_the_capacity_never_fits(state: SharedState) -> None:
    refused = await state.reserve("r1", [Limit("k:tpm", 100, "minute", amount=101)], ttl_s=5)
    assert not refused.allowed and refused.retry_after_s is None


async def test_unlimited_counters_admit_and_count(state: SharedState) -> None:
    limit = Limit("k:tokens", None, "month", amount=7)
    for i in range(3):
        assert (await state.reserve(f"r{i}", [limit], ttl_s=5)).allowed
    assert await state.settle("r0", {"k:tokens": 5})
    (counter,) = await state.usage([limit])
    assert (counter.used, counter.held, counter.remaining) == (5, 14, float("inf"))


async def test_a_live_reservation_id_cannot_be_reused(state: SharedState) -> None:
    limit = Limit("k:rpm", 10, "minute")
    await state.reserve("r1", [limit], ttl_s=5)
    with pytest.raises(ReservationExists):
        await state.reserve("r1", [limit], ttl_s=5)
    assert await state.settle("r1")
    assert (await state.reserve("r1", [limit], ttl_s=5)).allowed  # a new reservation
    assert await used_and_held(state, limit) == (1, 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Limit("", 1, "minute"),
        lambda: Limit("k", 1, "fortnight"),  # type: ignore[arg-type]
        lambda: Limit("k", 1, 0),
        lambda: Limit("k", 1, "minute", amount=-1),
        lambda: Limit("k", -1, "minute"),
        lambda: Limit("k", 1e12, "minute"),
    ],
)
def test_invalid_limits_are_refused(make: Callable[[], Limit]) -> None:
    with pytest.raises(ValueError):
        make()


async def test_invalid_reservations_are_refused(state: SharedState) -> None:
    limit = Limit("k:rpm", 10, "minute")
    with pytest.raises(ValueError):
        await state.reserve("r1", [limit, limit], ttl_s=5)
    with pytest.raises(ValueError):
        await state.reserve("r1", [limit], ttl_s=0)
    await state.reserve("r1", [limit], ttl_s=5)
    with pytest.raises(ValueError):
        await state.settle("r1", {"k:rpm": -1})
    assert await used_and_held(state, limit) == (0, 1)


# -- settlement --------------------------------------------------------------------------


async def test_settle_is_idempotent(state: SharedState) -> None:
    limit = Limit("k:tpm", 1000, "minute", amount=300)
    await state.reserve("r1", [limit], ttl_s=30)
    assert await state.settle("r1", {"k:tpm": 120})
    assert not await state.settle("r1", {"k:tpm": 120})
    assert not await state.release("r1")
    assert await used_and_held(state, limit) == (120, 0)


async def test_counters_not_named_settle_at_their_reserved_amount(state: SharedState) -> None:
    limits = [
        Limit("k:rpm", 60, "minute"),
        Limit("k:tpm", 1000, "minute", amount=300),
        Limit("k:inflight", 4, "concurrent"),
    ]
    await state.reserve("r1", limits, ttl_s=30)
    assert await state.settle("r1", {"k:tpm": 42, "k:unknown": 5})
    usage = await state.usage(limits)
    assert [(c.used, c.held) for c in usage] == [(1, 0), (42, 0), (0, 0)]


async def test_release_drops_the_hold_without_usage(state: SharedState) -> None:
    limits = [Limit("k:rpm", 1, "minute"), Limit("k:usd", 1.0, "day", amount=0.5)]
    await state.reserve("r1", limits, ttl_s=30)
    assert not (await state.reserve("r2", limits, ttl_s=30)).allowed
    assert await state.release("r1")
    assert not await state.settle("r1")
    assert [(c.used, c.held) for c in await state.usage(limits)] == [(0, 0), (0, 0)]
    assert (await state.reserve("r2", limits, ttl_s=30)).allowed


async def test_reserved_minus_settled_returns_to_zero(state: SharedState) -> None:
    rng = random.Random(7)
    limits = [
        Limit("k:tpm", None, "minute", amount=0.1),
        Limit("k:usd", None, "day", amount=0.003),
        Limit("k:inflight", None, "concurrent"),
    ]
    settled = 0.0
    for batch in range(5):
        ids = [f"r{batch}-{i}" for i in range(40)]
        await asyncio.gather(*(state.reserve(rid, limits, ttl_s=30) for rid in ids))
        for rid in ids:
            if rng.random() < 0.3:
                assert await state.release(rid)
            else:
                cost = rng.choice([0.0, 0.0001, 0.0007, 0.003])
                settled += cost
                assert await state.settle(rid, {"k:usd": cost})
    usage = await state.usage(limits)
    assert [c.held for c in usage] == [0, 0, 0]
    assert usage[1].used == pytest.approx(settled, abs=1e-9)


async def test_concurrent_holds_are_released_and_retry_after_the_first_expiry(
    state: SharedState, clock: FakeClock
) -> None:
    limit = Limit("k:inflight", 2, "concurrent")
    await state.reserve("r1", [limit], ttl_s=10)
    clock.advance(2)
    await state.reserve("r2", [limit], ttl_s=10)
    refused = await state.reserve("r3", [limit], ttl_s=10)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(8)
    assert refused.counters[0].reset_at is None
    assert await state.settle("r1")
    assert (await state.reserve("r3", [limit], ttl_s=10)).allowed
    assert await used_and_held(state, limit) == (0, 2)


# -- expiry and windows ------------------------------------------------------------------


async def test_holds_expire_by_themselves(state: SharedState, clock: FakeClock) -> None:
    limits = [Limit("k:inflight", 1, "concurrent"), Limit("k:usd", 1.0, "day", amount=1.0)]
    await state.reserve("r1", limits, ttl_s=10)  # and its process dies
    clock.advance(9.999)
    assert not (await state.reserve("r2", limits, ttl_s=10)).allowed
    clock.advance(0.001)
    assert [c.held for c in await state.usage(limits)] == [0, 0]  # not purged yet, not counted
    assert not await state.settle("r1")  # too late: changes nothing
    assert [(c.used, c.held) for c in await state.usage(limits)] == [(0, 0), (0, 0)]
    assert (await state.reserve("r2", limits, ttl_s=10)).allowed


async def test_holds_left_open_among_many_settled_ones_expire(
    state: SharedState, clock: FakeClock
) -> None:
    limit = Limit("k:inflight", 500, "concurrent")
    ids = [f"r{i}" for i in range(300)]
    await asyncio.gather(*(state.reserve(rid, [limit], ttl_s=10) for rid in ids))
    for rid in ids[10:]:
        assert await state.settle(rid)
    assert await used_and_held(state, limit) == (0, 10)
    clock.advance(10)
    assert await used_and_held(state, limit) == (0, 0)


async def test_holds_expire_on_the_real_clock(live_state: SharedState) -> None:
    limit = Limit("k:inflight", 3, "concurrent")
    started = time.monotonic()
    for i in range(3):
        assert (await live_state.reserve(f"r{i}", [limit], ttl_s=0.5)).allowed
    refused = not (await live_state.reserve("late", [limit], ttl_s=0.5)).allowed
    assert refused or time.monotonic() - started >= 0.5  # (unless this machine stalled)

    async def drained() -> bool:
        return await used_and_held(live_state, limit) == (0, 0)

    await eventually(drained)
    assert not await live_state.settle("r0")
    assert (await live_state.reserve("late", [limit], ttl_s=5)).allowed


async def test_windows_roll_over(state: SharedState, clock: FakeClock) -> None:
    clock.now = MINUTE_START + 59
    limits = [Limit("k:rpm", 2, "minute"), Limit("k:tpm", 100, "minute", amount=10)]
    for i in range(2):
        assert (await state.reserve(f"old{i}", limits, ttl_s=30)).allowed
    refused = await state.reserve("x", limits, ttl_s=30)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1)
    clock.advance(1)
    fresh = await state.reserve("new", limits, ttl_s=30)
    assert fresh.allowed
    assert [(c.used, c.held, c.reset_at) for c in fresh.counters] == [
        (0, 1, MINUTE_START + 120),
        (0, 10, MINUTE_START + 120),
    ]
    # a reservation of the last window settles there, and does not charge this one
    assert await state.settle("old0", {"k:tpm": 90})
    assert [(c.used, c.held) for c in await state.usage(limits)] == [(0, 1), (0, 10)]


async def test_windows_roll_over_on_the_real_clock(live_state: SharedState) -> None:
    limit = Limit("k:per-second", 1, 1)
    first = await live_state.reserve("r1", [limit], ttl_s=5)
    assert first.allowed and first.counters[0].reset_after_s is not None
    assert 0 < first.counters[0].reset_after_s <= 1

    async def admitted() -> Any:
        admission = await live_state.reserve(f"r-{secrets.token_hex(4)}", [limit], ttl_s=5)
        return admission if admission.allowed else None

    later = await eventually(admitted, within=3)
    assert first.counters[0].reset_at is not None
    assert later.counters[0].reset_at == first.counters[0].reset_at + 1
    assert later.counters[0].held == 1


@pytest.mark.parametrize(
    "instant",
    [
        "2024-02-29T23:59:59.999",
        "2024-03-01T00:00:00.000",
        "2023-12-31T23:59:59.000",
        "2024-01-31T12:00:00.000",
        "2100-02-28T00:00:00.000",
        "2000-02-29T06:00:00.000",
    ],
)
async def test_calendar_windows_are_utc(state: SharedState, clock: FakeClock, instant: str) -> None:
    now = datetime.fromisoformat(instant).replace(tzinfo=UTC)
    clock.now = now.timestamp()
    limits = [Limit("k:day", 10, "day"), Limit("k:month", 10, "month")]
    day, month = (await state.reserve("r1", limits, ttl_s=5)).counters
    next_day = datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp() + 86400
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert day.reset_at == next_day
    assert month.reset_at == next_month.timestamp()
    assert window_bounds("month", int(clock.now * 1000))[1] == next_month.timestamp() * 1000


# -- values and broadcast ----------------------------------------------------------------


async def test_values(state: SharedState) -> None:
    assert await state.get("a") is None
    await state.set("a", b"1")
    assert await state.get("a") == b"1"
    assert await state.incr("a", 4) == 5
    assert await state.incr("n", -2) == -2
    assert await state.delete("a") and not await state.delete("a")
    assert await state.get("a") is None


async def test_values_expire(live_state: SharedState) -> None:
    await live_state.set("v", b"x", ttl_s=0.1)
    assert await live_state.incr("n", ttl_s=0.3) == 1
    assert await live_state.incr("n", ttl_s=60) == 2  # keeps its first expiry: gone below

    async def gone() -> bool:
        return await live_state.get("v") is None and await live_state.get("n") is None

    await eventually(gone)
    assert await live_state.incr("n") == 1


async def test_values_by_prefix(state: SharedState) -> None:
    """Counting and deleting by prefix: only keys under it, glob characters taken literally."""
    for key in ("cache:a*:1", "cache:a*:2", "cache:ab:1", "other"):
        await state.set(key, b"x")
    assert await state.count_prefix("cache:a*:") == 2
    assert await state.count_prefix("cache:") == 3
    assert await state.delete_prefix("cache:a*:") == 2
    assert await state.get("cache:a*:1") is None and await state.get("cache:ab:1") == b"x"
    assert await state.count_prefix("cache:") == 1 and await state.get("other") == b"x"
    assert await state.delete_prefix("nothing:") == 0


async def test_compare_and_set(state: SharedState) -> None:
    assert await state.compare_and_set("cas", None, b"1")  # None: create only if absent
    assert not await state.compare_and_set("cas", None, b"2")
    assert not await state.compare_and_set("cas", b"0", b"2")  # not the value: refused
    assert await state.get("cas") == b"1"
    assert await state.compare_and_set("cas", b"1", b"2")
    assert await state.get("cas") == b"2"
    assert not await state.compare_and_set("other", b"", b"x")  # absent is not empty
    await state.set("empty", b"")
    assert not await state.compare_and_set("empty", None, b"x")
    assert await state.compare_and_set("empty", b"", b"x")
    assert await state.get("empty") == b"x"


async def test_compare_and_set_applies_its_ttl(live_state: SharedState) -> None:
    assert await live_state.compare_and_set("cas", None, b"1", ttl_s=60)
    assert await live_state.compare_and_set("cas", b"1", b"2", ttl_s=0.1)  # the new TTL

    async def gone() -> bool:
        return await live_state.get("cas") is None

    await eventually(gone)
    assert not await live_state.compare_and_set("cas", b"2", b"3")  # expired: absent
    assert await live_state.compare_and_set("cas", None, b"3")


@pytest.fixture(params=["memory", "redis"])
async def updaters(
    request: pytest.FixtureRequest, redis_prefix: str
) -> AsyncIterator[list[SharedState]]:
    """Four updaters of one shared value: four Redis clients (as four processes would
    have), or four users of one in-process state."""
    if request.param == "memory":
        shared = MemorySharedState()
        yield [shared] * 4
        return
    clients = [redis.from_url(REDIS_URL) for _ in range(4)]
    try:
        yield [RedisSharedState(c, prefix=redis_prefix) for c in clients]
    finally:
        for client in clients:
            await client.aclose()


async def test_exactly_one_concurrent_compare_and_set_wins_per_round(
    updaters: list[SharedState],
) -> None:
    current: bytes | None = None
    for round_ in range(20):
        proposals = [f"{round_}:{i}".encode() for i in range(len(updaters))]
        tries = zip(updaters, proposals, strict=True)
        wins = await asyncio.gather(*(u.compare_and_set("cas", current, p) for u, p in tries))
        assert sum(wins) == 1, wins
        current = proposals[wins.index(True)]
        assert await updaters[0].get("cas") == current


async def test_compare_and_set_loses_no_update_under_contention(
    updaters: list[SharedState],
) -> None:
    """Read, add one, write if unchanged, else read again: 4 x 25 updaters at once, 100."""

    async def add_one(shared: SharedState) -> None:
        while True:
            raw = await shared.get("n")
            if await shared.compare_and_set("n", raw, str(int(raw or 0) + 1).encode()):
                return

    await asyncio.gather(*(add_one(u) for u in updaters for _ in range(25)))
    assert await updaters[0].get("n") == b"100"


async def test_publish_reaches_every_subscriber(state: SharedState) -> None:
    async with (
        state.subscribe("keys") as first,
        state.subscribe("keys") as second,
        state.subscribe("prompts") as other,
    ):
        assert await state.publish("keys", b"revoked:k1") == 2
        assert await state.publish("prompts", b"p1") == 1
        async with asyncio.timeout(5):
            assert await anext(first) == b"revoked:k1"
            assert await anext(second) == b"revoked:k1"
            assert await anext(other) == b"p1"
    assert await state.publish("keys", b"nobody") == 0


async def test_aclose_ends_subscriptions(state: SharedState) -> None:
    async with state.subscribe("keys") as messages:
        received: list[bytes] = []

        async def consume() -> None:
            async for message in messages:
                received.append(message)

        async def one_received() -> bool:
            return received == [b"one"]

        task = asyncio.create_task(consume())
        await state.publish("keys", b"one")
        await eventually(one_received)
        await state.aclose()
        async with asyncio.timeout(5):
            await task
    assert received == [b"one"]


# -- Redis specifics ---------------------------------------------------------------------


async def test_processes_share_counters_through_redis(redis_prefix: str, clock: FakeClock) -> None:
    limit = Limit("k:rpm", 5, "minute")
    clients = [redis.from_url(REDIS_URL) for _ in range(3)]
    try:
        states = [RedisSharedState(c, prefix=redis_prefix, clock=clock) for c in clients]
        admissions = await asyncio.gather(
            *(states[i % 3].reserve(f"r{i}", [limit], ttl_s=30) for i in range(30))
        )
        assert sum(a.allowed for a in admissions) == 5
        first = next(a.reservation_id for a in admissions if a.allowed)
        assert await states[2].settle(first) and not await states[0].settle(first)
        assert [(c.used, c.held) for c in await states[1].usage([limit])] == [(1, 4)]
    finally:
        for client in clients:
            await client.aclose()


async def test_redis_keys_carry_hash_tags_and_expire(redis_client: Any, redis_prefix: str) -> None:
    state = RedisSharedState(redis_client, prefix=redis_prefix)
    limits = [
        Limit("{key:k1}:rpm", 60, "minute"),
        Limit("{key:k1}:usd", 5, "month", amount=0.5),
        Limit("plain", 2, "concurrent"),
    ]
    await state.reserve("{key:k1}:r1", limits, ttl_s=30)
    await state.incr("hits", ttl_s=30)
    keys = sorted([k.decode() async for k in redis_client.scan_iter(match=redis_prefix + "*")])
    assert [k.removeprefix(redis_prefix) for k in keys] == [
        "c:{key:k1}:rpm:minute",
        "c:{key:k1}:rpm:minute:x",
        "c:{key:k1}:usd:month",
        "c:{key:k1}:usd:month:x",
        "c:{plain}:concurrent",
        "c:{plain}:concurrent:x",
        "r:{key:k1}:r1",
        "v:hits",
    ]
    for key in keys:
        assert await redis_client.pttl(key) > 0, key
    assert await state.settle("{key:k1}:r1")
    assert not [k async for k in redis_client.scan_iter(match=redis_prefix + "r:*")]
