"""The in-process shared state, for the embedded mode and for tests.

No method awaits between reading and writing, so each is atomic on its event loop (the
state is not meant to be shared across threads). The clock is injectable: windows and
hold expiries follow it, so a test can move through minutes and months at once.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from guarita.state import (
    NAMED_WINDOWS_S,
    Admission,
    CounterState,
    Limit,
    ReservationExists,
    Window,
    amounts_of,
    check_reservation,
    counter_states,
    settled_units,
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


@dataclass(slots=True)
class _Counter:
    """A counter in one window: what is settled, and the sum of the live holds (the holds
    themselves belong to their reservations)."""

    start: int
    end: int | None
    used: int = 0
    held: int = 0
    holders: int = 0
    """Live reservations holding some of it (an idle concurrent counter is forgotten)."""


@dataclass(slots=True)
class _Reservation:
    expires_ms: int
    holds: list[tuple[_Counter, int, str, bool]]
    """Per limit: its counter (of the window it was admitted in), the amount held, the
    counter's name, and whether it is a concurrent one (released, never used)."""


class MemorySharedState:
    """One process's counters, reservations, values and broadcast."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[tuple[str, Window], _Counter] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._expiries: list[tuple[int, str]] = []  # heap of (expires, id); some settled
        self._values: dict[str, tuple[bytes, int | None]] = {}
        self._subscribers: dict[str, set[_MemorySubscription]] = {}
        self._next_sweep_ms = 0
        self._bounds: dict[Window, tuple[int, int | None]] = {}  # the last window of each

    async def reserve(
        self,
        reservation_id: str,
        limits: Sequence[Limit],
        ttl_s: float,
        amounts: Sequence[int] | None = None,
    ) -> Admission:
        check_reservation(reservation_id, limits, ttl_s)
        units = amounts_of(limits, amounts)
        now = self._now_ms()
        self._sweep(now)
        self._expire(now)
        existing = self._reservations.get(reservation_id)
        if existing is not None:
            raise ReservationExists(f"reservation {reservation_id!r} is live")
        counters = []
        counts: list[int] = []
        refused = []
        for limit, amount in zip(limits, units, strict=True):
            counter = self._counter(limit, now)
            counters.append(counter)
            used, held = counter.used, counter.held
            counts += (used, held, -1 if counter.end is None else counter.end)
            capacity = limit.capacity_units  # -1: unlimited
            if capacity >= 0 and used + held + amount > capacity:
                refused.append((limit, counter, amount))
        if refused:
            waits = [self._wait_ms(limit, counter, amount, now)
                     for limit, counter, amount in refused]  # fmt: skip
            return Admission(
                False, reservation_id, limits, counts, now,
                refused_by=refused[0][0].counter,
                retry_after_s=None if None in waits else max(w or 0 for w in waits) / 1000,
            )  # fmt: skip
        expires = now + ttl_ms(ttl_s)
        holds = []
        at = 1
        for limit, counter, amount in zip(limits, counters, units, strict=True):
            counter.held += amount
            counter.holders += 1
            counts[at] += amount
            at += 3
            holds.append((counter, amount, limit.counter, limit.window == "concurrent"))
        self._reservations[reservation_id] = _Reservation(expires, holds)
        heapq.heappush(self._expiries, (expires, reservation_id))
        if len(self._expiries) > 2 * len(self._reservations) + 1024:  # mostly settled
            self._expiries = [(r.expires_ms, rid) for rid, r in self._reservations.items()]
            heapq.heapify(self._expiries)
        return Admission(True, reservation_id, limits, counts, now)

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
        self._expire(now)
        counts: list[int] = []
        for limit in limits:
            counter = self._counter(limit, now)
            counts += (counter.used, counter.held, -1 if counter.end is None else counter.end)
        return counter_states(limits, counts, now)

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

    async def delete_prefix(self, prefix: str) -> int:
        now = self._now_ms()
        found = [k for k in self._values if k.startswith(prefix)]
        live = sum(1 for k in found if self._value(k, now) is not None)
        for key in found:
            self._values.pop(key, None)
        return live

    async def items_prefix(self, prefix: str) -> AsyncIterator[tuple[str, bytes]]:
        now = self._now_ms()
        for key in [k for k in self._values if k.startswith(prefix)]:
            entry = self._value(key, now)
            if entry is not None:
                yield key, entry[0]

    async def count_prefix(self, prefix: str) -> int:
        now = self._now_ms()
        return sum(1 for k in list(self._values) if k.startswith(prefix) and self._value(k, now))

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
        counter = self._counters.get(key)
        if counter is None or counter.start != bounds[0]:
            counter = self._counters[key] = _Counter(bounds[0], bounds[1])
        return counter

    def _expire(self, now_ms: int) -> None:
        """Holds past their expiry stop counting (heap entries of settled ones are stale)."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now_ms:
            expires, reservation_id = heapq.heappop(expiries)
            record = self._reservations.get(reservation_id)
            if record is not None and record.expires_ms == expires:
                del self._reservations[reservation_id]
                self._drop(record)

    @staticmethod
    def _drop(record: _Reservation) -> None:
        for counter, amount, _, _ in record.holds:
            counter.held -= amount
            counter.holders -= 1

    def _wait_ms(self, limit: Limit, counter: _Counter, amount: int, now_ms: int) -> int | None:
        """How long until a refused amount may fit: ``None`` if it never can."""
        assert limit.capacity is not None  # only limited counters refuse
        if amount > limit.capacity_units:
            return None
        if counter.end is not None:
            return counter.end - now_ms
        # concurrent: until the first of its holds expires (a refusal only: a scan is fine)
        first = min(
            (r.expires_ms for r in self._reservations.values()
             if any(c is counter for c, _, _, _ in r.holds)),
            default=now_ms,
        )  # fmt: skip
        return first - now_ms

    def _finish(self, reservation_id: str, actual: dict[str, int] | None) -> bool:
        """Settle (``actual`` given) or release the reservation's holds, once."""
        record = self._reservations.pop(reservation_id, None)
        if record is None:
            return False
        if record.expires_ms <= self._now_ms():
            self._drop(record)  # expired: its holds no longer count, and it settles nothing
            return False
        for counter, amount, name, concurrent in record.holds:
            counter.held -= amount
            counter.holders -= 1
            if actual is not None and not concurrent:
                counter.used += actual.get(name, amount)
        return True

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
        self._expire(now_ms)
        for key, counter in list(self._counters.items()):
            if (counter.end is None and not counter.holders) or (
                counter.end is not None and counter.end <= now_ms
            ):
                del self._counters[key]
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
