"""The in-process shared state, for the embedded mode and for tests.

No method awaits between reading and writing, so each is atomic on its event loop (the
state is not meant to be shared across threads). The clock is injectable: windows and
hold expiries follow it, so a test can move through minutes and months at once.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from guarita.state import (
    NAMED_WINDOWS_S,
    UNITS_PER_ONE,
    Admission,
    CounterState,
    Limit,
    ReservationExists,
    Window,
    check_reservation,
    settled_units,
    to_units,
    ttl_ms,
)

SWEEP_EVERY_MS = 60_000
"""How often (on the state's clock) ended windows and expired entries are forgotten."""


def window_bounds(window: Window, now_ms: int) -> tuple[int, int | None]:
    """Start and end (ms) of the window holding ``now_ms``; a ``"concurrent"`` counter has
    one window that never ends. The Lua twin is ``bounds`` in ``lua/prelude.lua``."""
    if window == "concurrent":
        return 0, None
    if window == "month":
        day = datetime.fromtimestamp(now_ms // 1000, UTC)
        first = datetime(day.year, day.month, 1, tzinfo=UTC)
        after = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)
        return int(first.timestamp()) * 1000, int(after.timestamp()) * 1000
    length = (NAMED_WINDOWS_S[window] if isinstance(window, str) else window) * 1000
    start = now_ms - now_ms % length
    return start, start + length


def _capacity_units(limit: Limit) -> int:
    """The capacity in units, or -1 when unlimited (as ``counter_state`` reads it)."""
    capacity = limit.capacity
    return -1 if capacity is None or math.isinf(capacity) else to_units(capacity)


@dataclass(slots=True)
class _Counter:
    start: int
    end: int | None
    used: int = 0
    held: int = 0
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)  # id: (amount, expires)
    expiries: list[tuple[int, str]] = field(default_factory=list)  # heap of (expires, id)

    def purge(self, now_ms: int) -> None:
        """Holds past their expiry stop counting (heap entries of settled holds are stale)."""
        while self.expiries and self.expiries[0][0] <= now_ms:
            expires, reservation_id = heapq.heappop(self.expiries)
            hold = self.holds.get(reservation_id)
            if hold is not None and hold[1] == expires:
                self.drop(reservation_id)

    def drop(self, reservation_id: str) -> int | None:
        hold = self.holds.pop(reservation_id, None)
        if hold is None:
            return None
        self.held -= hold[0]
        if len(self.expiries) > 2 * len(self.holds) + 64:  # mostly settled: rebuild
            self.expiries = [(expires, rid) for rid, (_, expires) in self.holds.items()]
            heapq.heapify(self.expiries)
        return hold[0]

    def wait_ms(self, limit: Limit, now_ms: int) -> int | None:
        """How long until a refused amount may fit: ``None`` if it never can."""
        assert limit.capacity is not None  # only limited counters refuse
        if to_units(limit.amount) > to_units(limit.capacity):
            return None
        if self.end is None:
            return min((expires for _, expires in self.holds.values()), default=now_ms) - now_ms
        return self.end - now_ms


@dataclass(slots=True)
class _Reservation:
    expires_ms: int
    counters: list[tuple[str, Window]]


class MemorySharedState:
    """One process's counters, reservations, values and broadcast."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[tuple[str, Window], _Counter] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._values: dict[str, tuple[bytes, int | None]] = {}
        self._subscribers: dict[str, set[_MemorySubscription]] = {}
        self._next_sweep_ms = 0
        self._bounds: dict[Window, tuple[int, int | None]] = {}  # the last window of each

    async def reserve(
        self, reservation_id: str, limits: Sequence[Limit], ttl_s: float
    ) -> Admission:
        check_reservation(reservation_id, limits, ttl_s)
        now = self._now_ms()
        self._sweep(now)
        existing = self._reservations.get(reservation_id)
        if existing is not None and existing.expires_ms > now:
            raise ReservationExists(f"reservation {reservation_id!r} is live")
        counters = [self._counter(limit, now) for limit in limits]
        amounts = [to_units(limit.amount) for limit in limits]
        capacities = [_capacity_units(limit) for limit in limits]  # -1: unlimited
        refused = [
            (limit, counter)
            for limit, counter, amount, capacity in zip(
                limits, counters, amounts, capacities, strict=True
            )
            if capacity >= 0 and counter.used + counter.held + amount > capacity
        ]
        if refused:
            waits = [counter.wait_ms(limit, now) for limit, counter in refused]
            return Admission(
                allowed=False,
                reservation_id=reservation_id,
                counters=self._states(limits, counters, now, capacities),
                refused_by=refused[0][0].counter,
                retry_after_s=None if None in waits else max(w or 0 for w in waits) / 1000,
            )
        expires = now + ttl_ms(ttl_s)
        for counter, amount in zip(counters, amounts, strict=True):
            counter.holds[reservation_id] = (amount, expires)
            counter.held += amount
            heapq.heappush(counter.expiries, (expires, reservation_id))
        self._reservations[reservation_id] = _Reservation(
            expires, [(limit.counter, limit.window) for limit in limits]
        )
        return Admission(True, reservation_id, self._states(limits, counters, now, capacities))

    async def settle(self, reservation_id: str, actual: Mapping[str, float] | None = None) -> bool:
        return self._finish(reservation_id, settled_units(actual))

    async def release(self, reservation_id: str) -> bool:
        return self._finish(reservation_id, None)

    def settle_soon(self, reservation_id: str, actual: Mapping[str, float] | None = None) -> None:
        """:meth:`settle`, applied at once (nothing to wait for in process)."""
        self._finish(reservation_id, settled_units(actual))

    async def flush(self) -> None:
        """Nothing waits: ``settle_soon`` applies at once."""

    async def usage(self, limits: Sequence[Limit]) -> tuple[CounterState, ...]:
        now = self._now_ms()
        return self._states(limits, [self._counter(limit, now) for limit in limits], now)

    async def get(self, key: str) -> bytes | None:
        entry = self._value(key, self._now_ms())
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._put(key, value, ttl_s, self._now_ms())

    async def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        now = self._now_ms()
        self._sweep(now)
        entry = self._value(key, now)
        value = by if entry is None else int(entry[0]) + by
        expires = None if entry is None else entry[1]
        if expires is None and ttl_s is not None:
            expires = now + ttl_ms(ttl_s)
        self._values[key] = (str(value).encode(), expires)
        return value

    async def delete(self, key: str) -> bool:
        found = self._value(key, self._now_ms()) is not None
        self._values.pop(key, None)
        return found

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None
    ) -> bool:
        now = self._now_ms()
        entry = self._value(key, now)
        if (None if entry is None else entry[0]) != expected:
            return False
        self._put(key, new, ttl_s, now)
        return True

    async def publish(self, channel: str, message: bytes) -> int:
        subscribers = self._subscribers.get(channel, set())
        for subscription in subscribers:
            subscription.deliver(bytes(message))
        return len(subscribers)

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return _MemorySubscription(self._subscribers, channel)

    async def aclose(self) -> None:
        """End every subscription (their ``async for`` loops stop)."""
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.deliver(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _counter(self, limit: Limit, now_ms: int) -> _Counter:
        """The counter in the window holding ``now_ms``: a new window starts empty."""
        key = (limit.counter, limit.window)
        bounds = self._bounds.get(limit.window)
        if bounds is None or now_ms < bounds[0] or (bounds[1] is not None and now_ms >= bounds[1]):
            bounds = self._bounds[limit.window] = window_bounds(limit.window, now_ms)
        start, end = bounds
        counter = self._counters.get(key)
        if counter is None or counter.start != start:
            counter = self._counters[key] = _Counter(start, end)
        else:
            counter.purge(now_ms)
        return counter

    def _states(
        self,
        limits: Sequence[Limit],
        counters: Sequence[_Counter],
        now_ms: int,
        capacities: Sequence[int] | None = None,
    ) -> tuple[CounterState, ...]:
        if capacities is None:
            capacities = [_capacity_units(limit) for limit in limits]
        return tuple(
            CounterState(
                limit,
                counter.used / UNITS_PER_ONE,
                counter.held / UNITS_PER_ONE,
                math.inf
                if capacity < 0
                else max(0, capacity - counter.used - counter.held) / UNITS_PER_ONE,
                None if counter.end is None else counter.end / 1000,
                None if counter.end is None else (counter.end - now_ms) / 1000,
            )
            for limit, counter, capacity in zip(limits, counters, capacities, strict=True)
        )

    def _finish(self, reservation_id: str, actual: dict[str, int] | None) -> bool:
        """Settle (``actual`` given) or release the reservation's holds, once."""
        record = self._reservations.pop(reservation_id, None)
        if record is None:
            return False
        live = record.expires_ms > self._now_ms()
        for key in record.counters:
            counter = self._counters.get(key)
            amount = None if counter is None else counter.drop(reservation_id)
            if counter is None or amount is None or not live or actual is None:
                continue
            if key[1] != "concurrent":
                counter.used += actual.get(key[0], amount)
        return live

    def _put(self, key: str, value: bytes, ttl_s: float | None, now_ms: int) -> None:
        self._sweep(now_ms)
        self._values[key] = (bytes(value), None if ttl_s is None else now_ms + ttl_ms(ttl_s))

    def _value(self, key: str, now_ms: int) -> tuple[bytes, int | None] | None:
        entry = self._values.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= now_ms:
            del self._values[key]
            return None
        return entry

    def _sweep(self, now_ms: int) -> None:
        """Forget ended windows, idle concurrent counters, expired reservations and values,
        at most once a minute, so that the maps do not grow with every key ever seen."""
        if now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + SWEEP_EVERY_MS
        for key, counter in list(self._counters.items()):
            counter.purge(now_ms)
            if (counter.end is None and not counter.holds) or (
                counter.end is not None and counter.end <= now_ms
            ):
                del self._counters[key]
        for reservation_id, record in list(self._reservations.items()):
            if record.expires_ms <= now_ms:
                del self._reservations[reservation_id]
        for value_key in list(self._values):
            self._value(value_key, now_ms)


class _MemorySubscription:
    """One subscriber's queue of messages; ``None`` in the queue ends the iteration."""

    def __init__(self, subscribers: dict[str, set[_MemorySubscription]], channel: str) -> None:
        self._subscribers = subscribers
        self._channel = channel
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._ended = False

    def deliver(self, message: bytes | None) -> None:
        self._queue.put_nowait(message)

    async def __aenter__(self) -> _MemorySubscription:
        self._subscribers.setdefault(self._channel, set()).add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subscribers = self._subscribers.get(self._channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self._subscribers[self._channel]

    def __aiter__(self) -> _MemorySubscription:
        return self

    async def __anext__(self) -> bytes:
        message = None if self._ended else await self._queue.get()
        if message is None:
            self._ended = True
            raise StopAsyncIteration
        return message
