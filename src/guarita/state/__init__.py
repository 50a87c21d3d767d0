"""The shared-state layer: what several API processes must agree on (limits, budgets,
breakers, invalidation), behind one small protocol with an in-process and a Redis
implementation.

The model, in four parts (``docs/shared-state.md`` has the guarantees and the Redis keys):

* **Counters in windows.** A :class:`Limit` names a counter, its capacity and its window:
  fixed windows aligned to the state's clock (``"minute"``, ``"hour"``, a UTC ``"day"``, a
  UTC calendar ``"month"``, or any whole number of seconds), or ``"concurrent"`` (in-flight
  holds, no window). In its current window a counter has ``used`` (settled) and ``held``
  (the sum of live reservations). For Redis the clock is the server's ``TIME``, so
  processes never disagree about where a window starts.
* **Reservations.** :meth:`Reservations.reserve` admits a reservation only if, for every
  limit, ``used + held + amount <= capacity`` — checked and applied for all limits at once,
  or for none. A reservation has an id and an expiry: a hold that is neither settled nor
  released stops counting after ``ttl_s`` by itself, so a killed process leaks nothing.
  :meth:`~Reservations.settle` turns a hold into usage with the real amounts;
  :meth:`~Reservations.release` drops it. Both act once per reservation id: a second call,
  or one after the expiry, changes nothing and returns ``False``. Holds and usage belong
  to the window in which the reservation was admitted (a call counts when it is made): a
  new window starts empty, and settling a reservation of a past window does not charge
  the new one.
* **Values.** Bytes with an optional TTL, integer counters (``incr``), and
  :meth:`~Values.compare_and_set`: a value several processes update atomically (read it,
  compute the next one, write it only if nobody wrote in between; else read again), which
  is how a circuit breaker's shared state moves.
* **Broadcast.** ``publish`` / ``subscribe`` for invalidation (Redis pub/sub, or an
  in-process broadcast). Delivery is at most once, to subscribers present at the time;
  a consumer keeps a TTL as the backstop.

Amounts are kept as integers in millionths (:data:`UNITS_PER_ONE`) in both
implementations, so that a budget in USD sums exactly (twenty reservations of $0.05 fill
$1.00 exactly, and reserved minus settled returns to exactly 0, which floating-point sums
in Redis's ``INCRBYFLOAT`` would not promise).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, NamedTuple, Protocol, Self

Window = Literal["minute", "hour", "day", "month", "concurrent"] | int
"""A named window, ``"concurrent"`` (holds only), or a fixed window of that many seconds."""

NAMED_WINDOWS_S = {"minute": 60, "hour": 3600, "day": 86400}
"""Fixed windows by name, in seconds; aligned to the epoch, so a ``"day"`` is a UTC day."""

UNITS_PER_ONE = 1_000_000
"""Amounts are stored as integer millionths: $0.000001, a millionth of a token."""

MAX_AMOUNT = (2**53 - 1) // UNITS_PER_ONE
"""The largest capacity or amount: Redis's Lua numbers are doubles, exact up to 2**53."""


MAX_UNITS = MAX_AMOUNT * UNITS_PER_ONE


class ReservationExists(ValueError):
    """A live reservation already has this id: ids must be unique (use a record id, not a
    caller-supplied request id, which a client may repeat)."""


@dataclass(slots=True)
class Limit:
    """One counter a reservation must fit in: ``amount`` out of ``capacity`` per window.

    A ``capacity`` of ``None`` (or infinity) admits everything but still counts. Treat it
    as immutable. A caller reserving the same limits every time with its own amounts
    passes them apart (``reserve(..., amounts=)``) rather than copying the limits."""

    counter: str
    capacity: float | None
    window: Window
    amount: float = 1.0
    capacity_units: int = field(default=-1, init=False, repr=False, compare=False)
    """The capacity in units, -1 when unlimited (computed once, for the hot path)."""
    amount_units: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.counter:
            raise ValueError("a limit needs a counter name")
        if isinstance(self.window, bool) or (isinstance(self.window, int) and self.window <= 0):
            raise ValueError(f"window of {self.counter!r} must be a positive number of seconds")
        if not isinstance(self.window, int) and self.window not in (
            *NAMED_WINDOWS_S,
            "month",
            "concurrent",
        ):
            raise ValueError(f"unknown window {self.window!r} for {self.counter!r}")
        check_amount(self.amount, f"amount of {self.counter!r}")
        if self.capacity is not None and not math.isinf(self.capacity):
            check_amount(self.capacity, f"capacity of {self.counter!r}")
            self.capacity_units = to_units(self.capacity)
        self.amount_units = to_units(self.amount)

    @property
    def unlimited(self) -> bool:
        return self.capacity is None or math.isinf(self.capacity)


class CounterState(NamedTuple):
    """A counter in its current window, as the state's clock sees it: what a caller needs
    for OpenAI's ``x-ratelimit-limit-*``, ``-remaining-*`` and ``-reset-*`` headers. (A
    named tuple: a call makes one per counter, and a tuple is made in a fifth of the time
    of a frozen dataclass.)"""

    limit: Limit
    used: float
    held: float
    remaining: float
    """``capacity - used - held``, never below 0; infinity when unlimited."""
    reset_at: float | None
    """End of the window, in epoch seconds of the state's clock; ``None`` if concurrent."""
    reset_after_s: float | None
    """Seconds until that end, measured on the state's clock (so no skew with Redis)."""


class Admission:
    """The answer to :meth:`Reservations.reserve`.

    When refused, ``refused_by`` is the first limit (in the order given) that did not fit,
    and ``retry_after_s`` the time until every limit that did not fit may admit it again:
    the end of its window, or for a ``"concurrent"`` limit the earliest expiry of a hold.
    ``retry_after_s`` is ``None`` when the amount exceeds a capacity and never fits.

    The counters' states are made when read (a call's headers read two of its six or ten):
    :attr:`counters` all of them, :meth:`counter` one, :meth:`share` a counter's fill
    without making its state. Treat it as immutable."""

    __slots__ = ("_counters", "_counts", "_limits", "_now_ms", "allowed", "refused_by",
                 "reservation_id", "retry_after_s")  # fmt: skip

    def __init__(
        self,
        allowed: bool,
        reservation_id: str,
        limits: Sequence[Limit],
        counts: Sequence[int],
        now_ms: int,
        refused_by: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """``counts``: per limit, in order, its used and held units and its window's end in
        ms (-1: concurrent), flat; ``now_ms`` on the state's clock."""
        self.allowed = allowed
        self.reservation_id = reservation_id
        self.refused_by = refused_by
        self.retry_after_s = retry_after_s
        self._limits = limits
        self._counts = counts
        self._now_ms = now_ms
        self._counters: tuple[CounterState, ...] | None = None

    @property
    def counters(self) -> tuple[CounterState, ...]:
        """Every limit's counter, in the order of the limits."""
        if self._counters is None:
            self._counters = counter_states(self._limits, self._counts, self._now_ms)
        return self._counters

    @property
    def limit_count(self) -> int:
        return len(self._limits)

    def counter(self, index: int) -> CounterState:
        """The counter of the ``index``-th limit."""
        used, held, end = self._counts[3 * index : 3 * index + 3]
        return counter_state(self._limits[index], used, held, end, self._now_ms)

    def share(self, index: int) -> float:
        """(used + held) / capacity of the ``index``-th limit; 0 when unlimited."""
        capacity = self._limits[index].capacity_units
        if capacity <= 0:
            return 0.0
        return (self._counts[3 * index] + self._counts[3 * index + 1]) / capacity

    def __repr__(self) -> str:
        return (
            f"Admission(allowed={self.allowed}, reservation_id={self.reservation_id!r}, "
            f"refused_by={self.refused_by!r}, retry_after_s={self.retry_after_s!r})"
        )


def counter_state(limit: Limit, used: int, held: int, end_ms: int, now_ms: int) -> CounterState:
    """A :class:`CounterState` from the units and milliseconds both implementations keep
    (``end_ms`` -1: a concurrent counter)."""
    capacity = limit.capacity_units
    remaining = math.inf if capacity < 0 else max(0, capacity - used - held) / UNITS_PER_ONE
    return tuple.__new__(CounterState, (
        limit, used / UNITS_PER_ONE, held / UNITS_PER_ONE, remaining,
        None if end_ms < 0 else end_ms / 1000, None if end_ms < 0 else (end_ms - now_ms) / 1000,
    ))  # fmt: skip


def counter_states(
    limits: Sequence[Limit], counts: Sequence[int], now_ms: int
) -> tuple[CounterState, ...]:
    """Every limit's :func:`counter_state`, from flat triples of used, held, end."""
    return tuple(
        counter_state(limit, counts[3 * i], counts[3 * i + 1], counts[3 * i + 2], now_ms)
        for i, limit in enumerate(limits)
    )


class Reservations(Protocol):
    """Atomic check-and-reserve over several counters, settled once per reservation id."""

    async def reserve(
        self,
        reservation_id: str,
        limits: Sequence[Limit],
        ttl_s: float,
        amounts: Sequence[int] | None = None,
    ) -> Admission:
        """Hold ``amount`` of every limit for at most ``ttl_s``, or nothing at all.
        ``amounts``: the amounts as whole units instead, one per limit (a caller that
        reserves on the same limits every time passes them apart; see :func:`amounts_of`).

        Raises :class:`ReservationExists` if the id is held by a live reservation."""
        ...

    async def settle(self, reservation_id: str, actual: Mapping[str, float] | None = None) -> bool:
        """Turn the holds into usage: ``actual[counter]``, or the amount reserved for a
        counter not in ``actual``; ``"concurrent"`` holds are just released. ``False`` if
        the reservation is unknown, already settled or released, or expired."""
        ...

    async def release(self, reservation_id: str) -> bool:
        """Drop the holds without usage (a refused or failed call)."""
        ...

    def settle_soon(self, reservation_id: str, actual: Mapping[str, float] | None = None) -> None:
        """:meth:`settle` without waiting for it (the hot path): in process it applies at
        once; on Redis it goes with this process's next ``reserve`` (no round trip of its
        own) or after a few milliseconds. Its holds count until then, so nothing is ever
        admitted that a settled state would refuse. Once by id, like ``settle``; a process
        that dies first leaves its holds to expire, like a call in flight."""
        ...

    async def flush(self) -> None:
        """Send what ``settle_soon`` left waiting, and wait until it is applied."""
        ...

    async def usage(self, limits: Sequence[Limit]) -> tuple[CounterState, ...]:
        """The counters of ``limits`` now (their amounts are ignored), for reporting."""
        ...


class Values(Protocol):
    """Shared values with an optional TTL (cache entries, assignment counters, breakers)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    async def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        """Add ``by`` and return the new value; ``ttl_s`` applies if the key has no TTL
        yet (so a counter created with a TTL keeps its first expiry)."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every value whose key starts with ``prefix``; how many there were. Not
        atomic (values set meanwhile may stay) and proportional to the number of keys: for
        an operator's action (clearing a cache namespace), not for a request's path."""
        ...

    async def count_prefix(self, prefix: str) -> int:
        """How many live values have a key starting with ``prefix`` (a scan: for reports)."""
        ...

    def items_prefix(self, prefix: str) -> AsyncIterator[tuple[str, bytes]]:
        """The live values whose key starts with ``prefix``, as ``(key, value)``, in no
        order (a scan, in pages: for a process loading what others shared at its start)."""
        ...

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None
    ) -> bool:
        """Write ``new`` (with ``ttl_s``, or no TTL, as :meth:`set` does) only if the value
        is ``expected`` now; ``expected=None`` creates the key only if it is absent (or
        expired). One atomic step: of several processes comparing against the same value,
        exactly one writes, the others get ``False`` and read again."""
        ...


class Broadcast(Protocol):
    """Invalidation by publish: at most once, to the subscribers present at the time."""

    async def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` to the channel's subscribers; how many there were."""
        ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``async with state.subscribe(ch) as messages: async for m in messages: ...``;
        subscribed once the ``async with`` is entered, so nothing published after is missed."""
        ...


class SharedState(Reservations, Values, Broadcast, Protocol):
    """Everything that must agree across processes. A component depends on the narrowest
    part it uses (a budget on :class:`Reservations`, a cache on :class:`Values`)."""

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_amount(value: float, what: str) -> None:
    if not (0 <= value <= MAX_AMOUNT):  # also refuses NaN
        raise ValueError(f"{what} must be between 0 and {MAX_AMOUNT}, not {value!r}")


def check_reservation(reservation_id: str, limits: Sequence[Limit], ttl_s: float) -> None:
    """What both implementations refuse before touching any state."""
    if not reservation_id:
        raise ValueError("a reservation needs an id")
    if not ttl_s >= 0.001:
        raise ValueError(f"ttl_s must be at least 1 ms, not {ttl_s!r}")
    names = [limit.counter for limit in limits]
    if len(set(names)) != len(names):
        raise ValueError(f"a reservation names each counter once: {names}")


def amounts_of(limits: Sequence[Limit], amounts: Sequence[int] | None) -> Sequence[int]:
    """The units a reservation holds: ``amounts`` (checked: one per limit, whole, in range)
    or each limit's own."""
    if amounts is None:
        return [limit.amount_units for limit in limits]
    if len(amounts) != len(limits):
        raise ValueError(f"{len(amounts)} amounts for {len(limits)} limits")
    if amounts and not (min(amounts) >= 0 and max(amounts) <= MAX_UNITS):
        raise ValueError(f"amounts must be units in [0, {MAX_UNITS}], not {list(amounts)}")
    return amounts


def ttl_ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


def to_units(value: float) -> int:
    return round(value * UNITS_PER_ONE)


def settled_units(actual: Mapping[str, float] | None) -> dict[str, int]:
    """The real amounts of a settlement, checked and in units (a value several counters
    share, as a call's cost on each of its budgets, is converted once)."""
    result = {}
    last: float | None = None
    units = 0
    for counter, value in (actual or {}).items():
        if value is not last:
            check_amount(value, f"actual amount of {counter!r}")
            last, units = value, to_units(value)
        result[counter] = units
    return result
