"""Circuit breakers: the pure state machine (``step``), then ``CircuitBreaker`` over the
shared breaker store on both shared states (in-process and Redis) with a fake clock, and
two stores (on Redis: two clients, as two API processes would have) moving the same
breaker: trips told by publish, half-open probes counted across both, failing at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from guarita.resilience.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerPolicy,
    BreakerState,
    BreakerStore,
    CircuitBreaker,
    Event,
    SharedBreakerStore,
    Step,
    step,
)
from guarita.runtime import Runtime
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState
from tests.helpers import REDIS_URL, FakeClock
from tests.resilience.support import settings

POLICY = BreakerPolicy()  # the defaults: 5 consecutive, 50% of >= 20 calls, 60 s open, 3 probes


def run(
    state: BreakerState, events: list[Event], now: float, policy: BreakerPolicy = POLICY
) -> tuple[Step, list[tuple[str, str]]]:
    """Apply events in turn at time ``now``; the last step and every transition seen."""
    transitions = []
    result = None
    for event in events:
        result = step(state, event, now, policy)
        state = result.state
        if result.transition:
            transitions.append(result.transition)
    assert result is not None
    return result, transitions


# -- The state machine ------------------------------------------------------------------


def test_defaults_match_the_documented_policy() -> None:
    assert (POLICY.failure_threshold, POLICY.open_s, POLICY.half_open_probes) == (5, 60.0, 3)


def test_five_consecutive_failures_open_it() -> None:
    result, transitions = run(BreakerState(window_start=0), ["failure"] * 4, now=1)
    assert result.state.state == CLOSED and result.state.consecutive_failures == 4
    assert transitions == []
    result, transitions = run(result.state, ["failure"], now=1)
    assert result.state.state == OPEN and result.state.opened_at == 1
    assert transitions == [(CLOSED, OPEN)]


def test_a_success_resets_the_consecutive_count() -> None:
    result, _ = run(BreakerState(window_start=0), ["failure"] * 4 + ["success"], now=1)
    result, _ = run(result.state, ["failure"] * 4, now=1)
    assert result.state.state == CLOSED and result.state.consecutive_failures == 4


def test_the_failure_ratio_opens_it_once_min_calls_are_reached() -> None:
    policy = BreakerPolicy(failure_threshold=5, failure_ratio=0.5, min_calls=10)
    # success, failure, success, failure...: never two failures in a row
    result, transitions = run(BreakerState(window_start=0), ["success", "failure"] * 4, 1, policy)
    assert result.state.state == CLOSED  # 4 of 8 failed, but 8 < min_calls
    result, transitions = run(result.state, ["success", "failure"], 1, policy)
    assert result.state.state == OPEN  # 5 of 10
    assert transitions == [(CLOSED, OPEN)]


def test_a_ratio_under_the_threshold_keeps_it_closed() -> None:
    policy = BreakerPolicy(failure_threshold=5, failure_ratio=0.5, min_calls=10)
    events = ["success", "success", "failure"] * 10  # a third fail
    result, transitions = run(BreakerState(window_start=0), events, 1, policy)
    assert result.state.state == CLOSED and transitions == []
    assert result.state.window_calls == 30 and result.state.window_failures == 10


def test_failures_of_an_old_window_do_not_count() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, min_calls=10, window_s=60)
    result, _ = run(BreakerState(window_start=0), ["failure"] * 9, now=1, policy=policy)
    assert result.state.window_failures == 9
    result, _ = run(result.state, ["failure"], now=61, policy=policy)  # a new window
    assert result.state.state == CLOSED
    assert (result.state.window_calls, result.state.window_failures) == (1, 1)


def test_open_refuses_until_open_s_then_lets_three_probes_through() -> None:
    opened, _ = run(BreakerState(window_start=0), ["failure"] * 5, now=10)
    assert not step(opened.state, "acquire", 10 + 59.9, POLICY).allowed
    first = step(opened.state, "acquire", 10 + 60, POLICY)
    assert first.allowed and first.transition == (OPEN, HALF_OPEN)
    state = first.state
    allowed = [first.allowed]
    for _ in range(3):
        result = step(state, "acquire", 71, POLICY)
        state = result.state
        allowed.append(result.allowed)
    assert allowed == [True, True, True, False]


# -- CircuitBreaker over each store -----------------------------------------------------


@dataclass
class Harness:
    breaker: CircuitBreaker
    clock: FakeClock
    transitions: list[tuple[str, str, str]] = field(default_factory=list)

    async def fail(self, times: int = 1) -> None:
        for _ in range(times):
            await self.breaker.record_failure()

    async def succeed(self, times: int = 1) -> None:
        for _ in range(times):
            await self.breaker.record_success()

    async def acquire(self, times: int) -> list[bool]:
        return [await self.breaker.allow_request() for _ in range(times)]

    def moves(self) -> list[tuple[str, str]]:
        return [(before, after) for _, before, after in self.transitions]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Callable[[FakeClock], BreakerStore]:
    """A store on a shared state of its own: in-process (no Redis needed), or a Redis
    client and a key prefix of the test's own."""

    if request.param == "memory":
        return lambda clock: SharedBreakerStore(MemorySharedState(), clock=clock)
    prefix = request.getfixturevalue("redis_prefix")
    clients = request.getfixturevalue("redis_clients")
    return lambda clock: SharedBreakerStore(RedisSharedState(clients(), prefix=prefix), clock=clock)


@pytest.fixture
def harness(make_store: Callable[[FakeClock], BreakerStore], clock: FakeClock) -> Harness:
    transitions: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        "dep-a",
        make_store(clock),
        BreakerPolicy(),
        on_transition=lambda *t: transitions.append(t),
    )
    return Harness(breaker, clock, transitions)


async def test_opens_at_five_consecutive_failures(harness: Harness) -> None:
    await harness.fail(4)
    assert await harness.breaker.state() == CLOSED
    assert await harness.breaker.allow_request()
    await harness.fail()
    assert await harness.breaker.state() == OPEN
    assert harness.transitions == [("dep-a", CLOSED, OPEN)]


async def test_opens_on_the_failure_ratio(
    make_store: Callable[[FakeClock], BreakerStore], clock: FakeClock
) -> None:
    breaker = CircuitBreaker("dep-r", make_store(clock), BreakerPolicy(min_calls=20))
    for _ in range(9):
        await breaker.record_success()
        await breaker.record_failure()
    await breaker.record_success()
    assert await breaker.state() == CLOSED  # 9 of 19: too few calls, and under 50%
    await breaker.record_failure()
    assert await breaker.state() == OPEN  # 10 of 20


async def test_stays_open_until_open_s(harness: Harness) -> None:
    await harness.fail(5)
    for _ in range(3):
        assert await harness.acquire(2) == [False, False]
        harness.clock.advance(19.9)  # 59.7 s in all
    assert await harness.breaker.state() == OPEN
    harness.clock.advance(0.3)
    assert await harness.breaker.allow_request()
    assert await harness.breaker.state() == HALF_OPEN
    assert harness.moves() == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


async def test_half_open_allows_at_most_three_probes(harness: Harness) -> None:
    await harness.fail(5)
    harness.clock.advance(60)
    assert await harness.acquire(5) == [True, True, True, False, False]


async def test_all_probes_succeeding_closes_it(harness: Harness) -> None:
    await harness.fail(5)
    harness.clock.advance(60)
    assert await harness.acquire(3) == [True, True, True]
    await harness.succeed(2)
    assert await harness.breaker.state() == HALF_OPEN  # two of three is not enough
    await harness.succeed()
    assert await harness.breaker.state() == CLOSED
    assert harness.moves() == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert await harness.acquire(10) == [True] * 10
    await harness.fail(4)  # closed afresh: the count starts again
    assert await harness.breaker.state() == CLOSED


async def test_one_failing_probe_reopens_it(harness: Harness) -> None:
    await harness.fail(5)
    harness.clock.advance(60)
    assert await harness.acquire(3) == [True, True, True]
    await harness.succeed(2)
    await harness.fail()
    assert await harness.breaker.state() == OPEN
    assert await harness.acquire(1) == [False]
    assert harness.moves()[-1] == (HALF_OPEN, OPEN)
    harness.clock.advance(59)
    assert await harness.acquire(1) == [False]  # a full open_s again, from the reopening
    harness.clock.advance(1)
    assert await harness.acquire(4) == [True, True, True, False]


async def test_lost_probes_are_released_after_open_s(harness: Harness) -> None:
    await harness.fail(5)
    harness.clock.advance(60)
    assert await harness.acquire(3) == [True, True, True]  # and none of them ever reports
    harness.clock.advance(30)
    assert await harness.acquire(1) == [False]
    harness.clock.advance(30)
    assert await harness.acquire(4) == [True, True, True, False]
    assert await harness.breaker.state() == HALF_OPEN
    await harness.succeed(3)
    assert await harness.breaker.state() == CLOSED


async def test_successes_while_open_change_nothing(harness: Harness) -> None:
    await harness.fail(5)
    await harness.succeed(10)  # answers of calls that started before it opened
    assert await harness.breaker.state() == OPEN
    assert await harness.acquire(1) == [False]


# -- One breaker, several processes ------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def shared_states(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """A factory of shared states, one per simulated process: on Redis, each on a client
    of its own (as each API process has), under the test's prefix; in-process, one state
    every store shares."""
    if request.param == "memory":
        memory = MemorySharedState()
        return lambda: memory
    prefix = request.getfixturevalue("redis_prefix")
    clients = request.getfixturevalue("redis_clients")
    return lambda: RedisSharedState(clients(), prefix=prefix)


@contextlib.asynccontextmanager
async def two_processes(
    make_state: Callable[[], Any], clock: FakeClock, **options: Any
) -> AsyncIterator[tuple[CircuitBreaker, CircuitBreaker, list[tuple[str, str, str]]]]:
    """One breaker as two API processes see it: two stores, listening (started), each on
    its own shared state; the transitions each reports, as (process, from, to)."""
    transitions: list[tuple[str, str, str]] = []
    stores: list[SharedBreakerStore] = []

    def breaker(process: str) -> CircuitBreaker:
        def seen(_name: str, before: str, after: str) -> None:
            transitions.append((process, before, after))

        store = SharedBreakerStore(make_state(), clock=clock, **options)
        stores.append(store)
        return CircuitBreaker("shared", store, BreakerPolicy(), on_transition=seen)

    a, b = breaker("a"), breaker("b")
    try:
        for store in stores:
            await store.start()
        yield a, b, transitions
    finally:
        for store in stores:
            await store.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not true after {within} s"
        await asyncio.sleep(0.01)


async def test_a_trip_in_one_process_stops_the_others(
    shared_states: Callable[[], Any], clock: FakeClock
) -> None:
    async with two_processes(shared_states, clock, refresh_s=0) as (a, b, transitions):
        assert await b.allow_request()
        for _ in range(5):
            await a.record_failure()
        assert not await b.allow_request()  # opened by a, seen by b
        assert await b.state() == OPEN
        assert transitions == [("a", CLOSED, OPEN)]
        clock.advance(60)
        # the three half-open probes are shared, however they are spread over the processes
        assert [await b.allow_request(), await a.allow_request(), await b.allow_request()] == [
            True,
            True,
            True,
        ]
        assert not await a.allow_request()
        for breaker in (a, b, a):
            await breaker.record_success()
        assert await a.state() == CLOSED
        assert await a.allow_request() and await b.allow_request()
        moves = [t[1:] for t in transitions]
        assert moves == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


async def test_a_failing_probe_in_any_process_reopens_it(
    shared_states: Callable[[], Any], clock: FakeClock
) -> None:
    async with two_processes(shared_states, clock, refresh_s=0) as (a, b, transitions):
        for _ in range(5):
            await b.record_failure()
        clock.advance(60)
        assert await a.allow_request() and await b.allow_request()
        await a.record_success()
        await b.record_failure()
        assert not await a.allow_request()
        assert transitions[-1] == ("b", HALF_OPEN, OPEN)


async def test_a_trip_is_published_to_the_others_before_their_refresh(
    shared_states: Callable[[], Any], clock: FakeClock
) -> None:
    """b caches the closed state for 30 s: only a's publish can make it refuse sooner."""
    async with two_processes(shared_states, clock, refresh_s=30) as (a, b, _):
        assert await b.allow_request()  # b has read (and cached) the closed state
        for _ in range(5):
            await a.record_failure()

        async def refused() -> bool:
            return not await b.allow_request()

        await eventually(refused, within=10)


async def test_half_open_probes_across_processes_never_exceed_the_limit(
    shared_states: Callable[[], Any], clock: FakeClock
) -> None:
    async with two_processes(shared_states, clock) as (a, b, transitions):
        for _ in range(5):
            await a.record_failure()
        clock.advance(60)
        allowed = await asyncio.gather(*(p.allow_request() for p in (a, b) * 20))
        assert sum(allowed) == BreakerPolicy().half_open_probes
        assert [t[1:] for t in transitions] == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


async def test_failures_are_counted_in_each_process(
    shared_states: Callable[[], Any], clock: FakeClock
) -> None:
    """By design (no shared write per call), each process counts its own failures: the
    threshold applies per process, the open state to all."""
    async with two_processes(shared_states, clock, refresh_s=0) as (a, b, _):
        for _ in range(4):
            await a.record_failure()
            await b.record_failure()
        assert await a.allow_request() and await b.allow_request()
        await b.record_failure()
        assert not await a.allow_request()


async def test_the_embedded_runtime_keeps_its_breakers_in_process(tmp_path: Path) -> None:
    """No ``redis_url``: the breakers live on the in-process state, and work without Redis."""
    model = {"provider": "scripted", "options": {"reply": "hi"}}
    runtime = Runtime(settings(tmp_path, {"m": model}, shared=False))
    await runtime.start()
    try:
        assert isinstance(runtime.state, MemorySharedState)
        breaker = runtime.models["m"].primary.breaker
        assert breaker is not None and await breaker.allow_request()
        for _ in range(5):
            await breaker.record_failure()
        assert not await breaker.allow_request()
        assert (await runtime.breakers.snapshot(["m"]))["m"].state == OPEN
    finally:
        await runtime.aclose()


def hammer_from_two_processes(
    prefix: str, name: str, policy: BreakerPolicy, clock: FakeClock, failures: int
) -> list[tuple[str, str, str]]:
    """Two threads, each with its own event loop and Redis client (as two API processes
    would have), record ``failures`` failures each of the same breaker at the same time;
    the transitions they report."""
    import redis.asyncio as redis

    transitions: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def seen(deployment: str, before: str, after: str) -> None:
        with lock:
            transitions.append((deployment, before, after))

    async def hammer() -> None:
        client = redis.from_url(REDIS_URL)
        try:
            store = SharedBreakerStore(RedisSharedState(client, prefix=prefix), clock=clock)
            breaker = CircuitBreaker(name, store, policy, on_transition=seen)
            await client.ping()
            start.wait(timeout=10)
            await asyncio.gather(*(breaker.record_failure() for _ in range(failures)))
        finally:
            await client.aclose()

    def worker() -> None:
        try:
            asyncio.run(hammer())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return transitions


def stored_state(prefix: str, name: str) -> BreakerState:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        raw = client.get(prefix + "v:breaker:" + name)  # the value breaker:<name>
    finally:
        client.close()
    assert raw is not None
    return BreakerState(**orjson.loads(raw))


def test_two_processes_failing_concurrently_open_it_once(redis_prefix: str) -> None:
    clock = FakeClock()
    transitions = hammer_from_two_processes(redis_prefix, "contended", BreakerPolicy(), clock, 40)
    assert transitions == [("contended", CLOSED, OPEN)]
    state = stored_state(redis_prefix, "contended")
    assert state.state == OPEN and state.opened_at == clock.now
    assert (state.consecutive_failures, state.window_failures, state.probes) == (0, 0, 0)
