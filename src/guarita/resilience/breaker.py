"""Circuit breakers per deployment: CLOSED → OPEN → HALF_OPEN → CLOSED.

A breaker opens on ``failure_threshold`` consecutive failures, or when at least
``min_calls`` calls in the current ``window_s`` failed at ``failure_ratio`` or more. A
failure is an error *or* a quality failure (slow, empty, truncated, invalid JSON,
refusal, low score: see ``quality.py``). After ``open_s`` it lets at most
``half_open_probes`` probe calls through; all succeeding closes it, any failing reopens it.

The state machine is one pure function, :func:`step`. :class:`SharedBreakerStore` keeps
the breakers on the shared-state layer (``guarita.state``: in-process in the embedded
mode, Redis in scale-out mode), so every API process sees and moves the same breaker:

* **Calls and failures are counted in each process**: no cross-process write per call (an
  optimistic transaction per call collapsed under load, see ``bench/README.md``), so the
  thresholds apply per process.
* **The breaker's state lives in the shared state** (a value ``breaker:<name>``): the
  process whose counts trip a breaker writes it open, and every process stops calling the
  deployment; half-open probes are counted across all processes, each move an atomic
  :meth:`~guarita.state.Values.compare_and_set` (read, step, write if unchanged, else again).
* **Invalidation by publish**: a process that changes a breaker's shared state publishes
  its name on the ``breaker`` channel, and every process's listener
  (:meth:`SharedBreakerStore.start`, owned by the runtime) drops its cached copy at once.
  Otherwise the hot path reads the shared state at most every ``refresh_s``: the backstop,
  since delivery is at most once. An open breaker refuses without reading it at all until
  its ``open_s`` is over.

The state layer has no key scan, so :meth:`BreakerStore.snapshot` takes the breakers'
names (the deployments are known from the configuration).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, Protocol

import orjson
import structlog

from guarita.state import Broadcast, Values
from guarita.state.listener import Listener

log = structlog.get_logger("guarita.breaker")

KEY_PREFIX = "breaker:"
"""A breaker's shared state is the value ``breaker:<name>`` (JSON of a BreakerState)."""
CHANNEL = "breaker"
"""Where a process that changed a breaker's shared state publishes its name."""

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
    async def apply(self, name: str, event: Event, policy: BreakerPolicy) -> Step:
        """Step breaker ``name`` by ``event`` under ``policy``."""
        ...

    async def snapshot(self, names: Iterable[str]) -> dict[str, BreakerState]:
        """The breakers ``names`` as this process sees them now (the shared state read
        afresh); a closed breaker with this process's counts."""
        ...


class BreakerBackend(Values, Broadcast, Protocol):
    """What the breakers need of the shared state: values, and publish for invalidation."""


class SharedBreakerStore:
    """Breakers shared by every process on one shared state (see the module docstring).

    ``clock`` (epoch seconds) drives the state machine; ``refresh_s`` bounds how long a
    cached shared state is used when no invalidation arrives; ``ttl_s`` is how long an
    untouched breaker's shared state is kept (then it is closed afresh).
    """

    def __init__(
        self,
        state: BreakerBackend,
        *,
        clock: Callable[[], float] = time.time,
        refresh_s: float = 0.25,
        ttl_s: float = 86400.0,
    ) -> None:
        self._state = state
        self._clock = clock
        self._refresh_s = refresh_s
        self._ttl_s = ttl_s
        self._origin = secrets.token_hex(8)  # to skip our own messages
        self._local: dict[str, BreakerState] = {}  # this process's counts
        self._cache: dict[str, tuple[float, BreakerState]] = {}  # name: (read at, shared)
        self._invalidations = 0  # a read that overlaps one is not cached
        self._listener = Listener(
            state, CHANNEL, self._on_message, on_subscribed=lambda: self._drop(None)
        )

    async def start(self) -> None:
        """Listen for other processes' changes; returns once subscribed (or after a few
        seconds: then ``refresh_s`` alone bounds how stale a copy gets)."""
        await self._listener.start()

    async def aclose(self) -> None:
        await self._listener.aclose()

    async def apply(self, name: str, event: Event, policy: BreakerPolicy) -> Step:
        shared = await self._shared(name)
        if shared.state == CLOSED:
            local = self._local.get(name)
            if local is None or local.state != CLOSED:  # closed elsewhere: start afresh
                local = shared
            result = step(local, event, self._clock(), policy)
            self._local[name] = result.state
            if result.transition and result.state.state == OPEN:  # this process tripped it
                return await self._transact(name, lambda current: _trip(current, result))
            return result
        if (
            event == "acquire"
            and shared.state == OPEN
            and self._clock() - shared.opened_at < policy.open_s
        ):
            return Step(shared, allowed=False)  # still open: no need to ask the shared state
        result = await self._transact(
            name, lambda current: step(current, event, self._clock(), policy)
        )
        if result.state.state == CLOSED:
            self._local[name] = result.state
        return result

    async def snapshot(self, names: Iterable[str]) -> dict[str, BreakerState]:
        states = {}
        for name in names:
            state = await self._read(name)
            local = self._local.get(name)
            if state.state == CLOSED and local is not None and local.state == CLOSED:
                state = local  # closed everywhere: this process's counts
            states[name] = state
        return states

    async def _shared(self, name: str) -> BreakerState:
        cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached[0] < self._refresh_s:
            return cached[1]
        return await self._read(name)

    async def _read(self, name: str) -> BreakerState:
        seen = self._invalidations
        state = _decode(await self._state.get(KEY_PREFIX + name))
        self._remember(name, state, seen)
        return state

    def _remember(self, name: str, state: BreakerState, seen: int) -> None:
        """Cache what was read, unless an invalidation arrived meanwhile (it may be newer)."""
        if self._invalidations == seen:
            self._cache[name] = (time.monotonic(), state)

    async def _transact(self, name: str, move: Callable[[BreakerState], Step]) -> Step:
        """Read the shared state, step it, write it if it changed and nobody wrote in
        between (else read again); tell the other processes of a change."""
        key = KEY_PREFIX + name
        while True:
            seen = self._invalidations
            raw = await self._state.get(key)
            current = _decode(raw)
            result = move(current)
            if result.state == current:
                self._remember(name, current, seen)
                return result
            new = orjson.dumps(asdict(result.state))
            if await self._state.compare_and_set(key, raw, new, ttl_s=self._ttl_s):
                self._remember(name, result.state, seen)
                await self._tell(name)
                return result

    async def _tell(self, name: str) -> None:
        message = orjson.dumps({"breaker": name, "by": self._origin})
        try:
            await self._state.publish(CHANNEL, message)
        except Exception as exc:  # noqa: BLE001 - the others see it within refresh_s
            log.warning("breaker_publish_failed", deployment=name, error_type=type(exc).__name__)

    def _on_message(self, message: bytes) -> None:
        try:
            body = orjson.loads(message)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("breaker"), str):
            log.warning("breaker_message_malformed")
        elif body.get("by") != self._origin:  # our own change is cached already
            self._drop(body["breaker"])

    def _drop(self, name: str | None) -> None:
        """Forget the cached shared state of ``name`` (of every breaker if None)."""
        self._invalidations += 1
        if name is None:
            self._cache.clear()
        else:
            self._cache.pop(name, None)


def _decode(raw: bytes | None) -> BreakerState:
    return BreakerState(**orjson.loads(raw)) if raw else BreakerState()


def _trip(current: BreakerState, local: Step) -> Step:
    """The shared state after a trip seen in this process: open, with the transition; if
    another process opened it first, as it is, and no transition."""
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
        return (await self.store.snapshot([self.name]))[self.name].state

    def _seen(self, result: Step) -> Step:
        if result.transition is not None:
            before, after = result.transition
            log.warning(
                "circuit_breaker_transition", deployment=self.name, before=before, after=after
            )
            if self.on_transition is not None:
                self.on_transition(self.name, before, after)
        return result
