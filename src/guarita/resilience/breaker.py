"""Circuit breakers per deployment: CLOSED → OPEN → HALF_OPEN → CLOSED.

A breaker opens on ``failure_threshold`` consecutive failures, or when at least
``min_calls`` calls in the current ``window_s`` failed at ``failure_ratio`` or more. A
failure is an error *or* a quality failure (slow, empty, truncated, invalid JSON,
refusal, low score: see ``quality.py``). After ``open_s`` it lets at most
``half_open_probes`` probe calls through; all succeeding closes it, any failing reopens it.

The state machine is one pure function, :func:`step`. Where the state lives is a backend:
a dict in the embedded default, a Redis hash updated with optimistic transactions in
scale-out mode, so every API process sees and moves the same breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import orjson
import structlog

log = structlog.get_logger("guarita.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
Event = Literal["acquire", "success", "failure"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window_s: float = 60.0
    open_s: float = 60.0
    half_open_probes: int = 3


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: str = CLOSED
    consecutive_failures: int = 0
    window_start: float = 0.0
    window_calls: int = 0
    window_failures: int = 0
    opened_at: float = 0.0
    probes: int = 0
    probe_successes: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    state: BreakerState
    allowed: bool = True
    transition: tuple[str, str] | None = None


def _open(s: BreakerState, now: float) -> BreakerState:
    return BreakerState(state=OPEN, opened_at=now, window_start=now)


def _advance_clock(s: BreakerState, now: float, p: BreakerPolicy) -> BreakerState:
    """Time-driven moves: a new window, OPEN → HALF_OPEN, lost probes released."""
    if s.state == CLOSED and now - s.window_start >= p.window_s:
        return replace(s, window_start=now, window_calls=0, window_failures=0)
    if s.state == OPEN and now - s.opened_at >= p.open_s:
        return replace(s, state=HALF_OPEN, probes=0, probe_successes=0, opened_at=now)
    if s.state == HALF_OPEN and now - s.opened_at >= p.open_s and s.probes >= p.half_open_probes:
        return replace(s, probes=s.probe_successes, opened_at=now)  # probes lost: let others try
    return s


def _on_success(s: BreakerState, now: float, p: BreakerPolicy) -> BreakerState:
    if s.state == HALF_OPEN:
        s = replace(s, probe_successes=s.probe_successes + 1)
        return BreakerState(window_start=now) if s.probe_successes >= p.half_open_probes else s
    if s.state == CLOSED:
        return replace(s, consecutive_failures=0, window_calls=s.window_calls + 1)
    return s


def _on_failure(s: BreakerState, now: float, p: BreakerPolicy) -> BreakerState:
    if s.state == HALF_OPEN:  # a failing probe
        return _open(s, now)
    if s.state != CLOSED:
        return s
    s = replace(
        s,
        consecutive_failures=s.consecutive_failures + 1,
        window_calls=s.window_calls + 1,
        window_failures=s.window_failures + 1,
    )
    ratio_tripped = (
        s.window_calls >= p.min_calls and s.window_failures / s.window_calls >= p.failure_ratio
    )
    return _open(s, now) if s.consecutive_failures >= p.failure_threshold or ratio_tripped else s


def step(s: BreakerState, event: Event, now: float, p: BreakerPolicy) -> Step:
    """The whole state machine: the state after ``event`` at time ``now``."""
    before = s.state
    s = _advance_clock(s, now, p)
    allowed = True
    if event == "acquire":
        if s.state == OPEN:
            allowed = False
        elif s.state == HALF_OPEN:
            allowed = s.probes < p.half_open_probes
            if allowed:
                s = replace(s, probes=s.probes + 1)
    elif event == "success":
        s = _on_success(s, now, p)
    else:
        s = _on_failure(s, now, p)
    transition = (before, s.state) if s.state != before else None
    return Step(s, allowed, transition)


class BreakerStore(Protocol):
    async def apply(self, name: str, event: Event, policy: BreakerPolicy) -> Step: ...

    async def snapshot(self) -> dict[str, BreakerState]: ...


class MemoryBreakerStore:
    """Breaker states of one process. Each ``apply`` runs without awaiting, so it is atomic."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._states: dict[str, BreakerState] = {}
        self._clock = clock

    async def apply(self, name: str, event: Event, policy: BreakerPolicy) -> Step:
        result = step(self._states.get(name, BreakerState()), event, self._clock(), policy)
        self._states[name] = result.state
        return result

    async def snapshot(self) -> dict[str, BreakerState]:
        return dict(self._states)

    def reset(self, name: str, state: BreakerState) -> None:
        self._states[name] = state

    def state(self, name: str) -> BreakerState:
        return self._states.get(name, BreakerState())


class RedisBreakerStore:
    """Breakers shared by all processes of a deployment.

    Calls and failures are counted in each process (no cross-process write per call: an
    optimistic transaction per call collapsed under load, see ``bench/README.md``), but the
    breaker's *state* lives in Redis: when any process trips a breaker, every process stops
    calling that deployment, and the half-open probes are counted across all of them with
    WATCH/MULTI/EXEC. The shared state is read at most every ``refresh_s`` on the hot path.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        clock: Callable[[], float] = time.time,
        refresh_s: float = 0.25,
    ) -> None:
        self._redis = client
        self._prefix = prefix + "breaker:"
        self._clock = clock
        self._refresh_s = refresh_s
        self._local = MemoryBreakerStore(clock)
        self._cache: dict[str, tuple[float, BreakerState]] = {}

    async def _shared(self, name: str) -> BreakerState:
        cached = self._cache.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._refresh_s:
            return cached[1]
        raw = await self._redis.get(self._prefix + name)
        state = BreakerState(**orjson.loads(raw)) if raw else BreakerState()
        self._cache[name] = (now, state)
        return state

    async def apply(self, name: str, event: Event, policy: BreakerPolicy) -> Step:
        shared = await self._shared(name)
        if shared.state == CLOSED:
            if self._local.state(name).state != CLOSED:  # closed elsewhere: Redis has the last word
                self._local.reset(name, shared)
            result = await self._local.apply(name, event, policy)
            if result.transition and result.state.state == OPEN:  # this process tripped it
                return await self._transact(name, policy, lambda current: _trip(current, result))
            return result
        if (
            event == "acquire"
            and shared.state == OPEN
            and self._clock() - shared.opened_at < policy.open_s
        ):
            return Step(shared, allowed=False)  # still open: no need to ask Redis
        result = await self._transact(
            name, policy, lambda current: step(current, event, self._clock(), policy)
        )
        if result.state.state == CLOSED:
            self._local.reset(name, result.state)
        return result

    async def _transact(
        self, name: str, policy: BreakerPolicy, move: Callable[[BreakerState], Step]
    ) -> Step:
        from redis.exceptions import WatchError

        key = self._prefix + name
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    current = BreakerState(**orjson.loads(raw)) if raw else BreakerState()
                    result = move(current)
                    if result.state != current:
                        pipe.multi()
                        pipe.set(key, orjson.dumps(asdict(result.state)), ex=86400)
                        await pipe.execute()
                    else:
                        await pipe.unwatch()
                    self._cache[name] = (time.monotonic(), result.state)
                    return result
                except WatchError:
                    continue

    async def snapshot(self) -> dict[str, BreakerState]:
        states = {}
        async for key in self._redis.scan_iter(match=self._prefix + "*"):
            raw = await self._redis.get(key)
            if raw:
                states[key.decode().removeprefix(self._prefix)] = BreakerState(**orjson.loads(raw))
        return states


def _trip(current: BreakerState, local: Step) -> Step:
    """Publish a trip seen in one process; if another process opened it first, no transition."""
    if current.state != CLOSED:
        return Step(current, local.allowed, None)
    return Step(local.state, local.allowed, local.transition)


@dataclass
class CircuitBreaker:
    """One deployment's breaker, over a shared store; tells ``on_transition`` of changes."""

    name: str
    store: BreakerStore
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    on_transition: Callable[[str, str, str], None] | None = None

    async def allow_request(self) -> bool:
        return self._seen(await self.store.apply(self.name, "acquire", self.policy)).allowed

    async def record_success(self) -> None:
        self._seen(await self.store.apply(self.name, "success", self.policy))

    async def record_failure(self) -> None:
        self._seen(await self.store.apply(self.name, "failure", self.policy))

    async def state(self) -> str:
        return (await self.store.snapshot()).get(self.name, BreakerState()).state

    def _seen(self, result: Step) -> Step:
        if result.transition is not None:
            before, after = result.transition
            log.warning(
                "circuit_breaker_transition", deployment=self.name, before=before, after=after
            )
            if self.on_transition is not None:
                self.on_transition(self.name, before, after)
        return result
