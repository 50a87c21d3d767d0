"""The shared state in Redis, for several API processes (scale-out mode).

Each counter operation is one Lua script (``lua/*.lua``, registered once and run by
``EVALSHA``), so a check and its writes are atomic with respect to every other process,
and windows and expiries follow the server's ``TIME``: processes never disagree about
where a minute ends. Keys (``docs/shared-state.md`` draws them):

* ``{prefix}c:{<counter>}:<window>`` — a counter's hash (window start, used, held, one
  field per hold) and ``…:x``, its holds by expiry; both expire after the window or the
  last hold, whichever is later.
* ``{prefix}r:{<reservation id>}`` — what a reservation holds, until its expiry.
* ``{prefix}v:<key>`` — values; pub/sub channels are ``{prefix}<channel>``.

:meth:`RedisSharedState.settle_soon` costs no round trip of its own: the settlement waits
in the process (its holds still count meanwhile) and goes with the next ``reserve`` of the
process, inside the same script, or after ``settle_delay_s`` if no reserve comes first.

Reserves asked for in the same event-loop iteration share one script (one round trip),
and every script takes one JSON argument instead of ``KEYS`` and ``ARGV`` lists (packing
those cost redis-py more CPU than the rest of the call): a single Redis, or a primary with
Sentinel, not a Redis Cluster (docs/shared-state.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from importlib.resources import files
from types import TracebackType
from typing import Any, Self

import orjson
import structlog

from guarita.providers.base import missing_extra
from guarita.state import (
    NAMED_WINDOWS_S,
    Admission,
    CounterState,
    Limit,
    ReservationExists,
    amounts_of,
    check_reservation,
    counter_states,
    settled_units,
    ttl_ms,
)

log = structlog.get_logger("guarita.state")

SUBSCRIBE_TIMEOUT_S = 10.0
SETTLE_DELAY_S = 0.01
"""How long a settlement of ``settle_soon`` waits for a ``reserve`` to carry it."""
SETTLE_ATTEMPTS = 3
"""Tries of a waiting settlement on Redis errors; then its holds expire by themselves."""
CARRIED_PER_RESERVE = 64
"""At most this many waiting settlements go with one ``reserve`` script."""
RESERVES_PER_CALL = 64
"""At most this many reserves asked for at the same moment share one script."""


def _script(name: str, *, prelude: bool = True) -> str:
    lua = files("guarita.state") / "lua"
    body = (lua / f"{name}.lua").read_text()
    return (lua / "prelude.lua").read_text() + "\n" + body if prelude else body


def _tagged(name: str) -> str:
    """``name`` with a hash tag: its own if it has one, else itself in braces."""
    opening = name.find("{")
    if opening >= 0 and name.find("}", opening + 1) > opening + 1:  # Redis's own rule
        return name
    return "{" + name + "}"


def _window_code(limit: Limit) -> tuple[str, int, str]:
    """The window as the scripts read it (kind, length in ms) and as keys name it."""
    window = limit.window
    if window == "concurrent":
        return "c", 0, "concurrent"
    if window == "month":
        return "M", 0, "month"
    if isinstance(window, str):
        return "f", NAMED_WINDOWS_S[window] * 1000, window
    return "f", window * 1000, f"{window}s"


class RedisSharedState:
    """Counters, reservations, values and broadcast shared by every process on one Redis.

    ``client`` is a ``redis.asyncio.Redis`` (bytes replies); the state does not close it
    unless it made it (:meth:`from_url`). ``clock`` replaces the server's ``TIME`` for
    windows and hold expiries — for tests only; key TTLs stay on Redis's own clock.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "guarita:",
        clock: Callable[[], float] | None = None,
        owns_client: bool = False,
        settle_delay_s: float = SETTLE_DELAY_S,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._clock = clock
        self._owns_client = owns_client
        self._settle_delay_s = settle_delay_s
        self._waiting: list[_Settlement] = []  # settle_soon's, not sent yet
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._asking: list[_Reserve] = []  # reserves of this loop iteration, not sent yet
        self._asking_handle: asyncio.Handle | None = None
        self._keys: dict[tuple[str, Any], tuple[str, str, int]] = {}
        self._plans: dict[int, tuple[Sequence[Limit], list[list[str | int]]]] = {}
        self._reserve = client.register_script(_script("reserve"))
        self._finish = client.register_script(_script("finish"))
        self._usage = client.register_script(_script("usage"))
        self._incr = client.register_script(_script("incr", prelude=False))
        self._compare_and_set = client.register_script(_script("compare_and_set", prelude=False))
        self._subscriptions: set[_RedisSubscription] = set()

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "guarita:", max_connections: int = 64) -> Self:
        """A state on a client of its own, with a bounded pool (calls wait for a connection
        rather than opening one per concurrent request)."""
        try:
            import redis.asyncio as redis
        except ImportError as exc:
            raise missing_extra("redis", "scale") from exc
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections)
        return cls(redis.Redis(connection_pool=pool), prefix=prefix, owns_client=True)

    async def reserve(
        self,
        reservation_id: str,
        limits: Sequence[Limit],
        ttl_s: float,
        amounts: Sequence[int] | None = None,
    ) -> Admission:
        check_reservation(reservation_id, limits, ttl_s)
        units = amounts_of(limits, amounts)
        key = self._reservation_key(reservation_id)
        loop = asyncio.get_running_loop()
        # the limits' part of the script's argument, made once per limits object (a key's
        # plan is cached) and sent once per batch however many reserves share it
        plan = self._plans.get(id(limits))
        if plan is None or plan[0] is not limits:
            if len(self._plans) > 10_000:
                self._plans.clear()
            described: list[list[str | int]] = []
            for limit in limits:
                counter_key, kind, length = self._counter_keys(limit)
                described.append([limit.counter, counter_key, kind, length, limit.capacity_units])
            plan = self._plans[id(limits)] = (limits, described)
        entry = [reservation_id, ttl_ms(ttl_s), key, plan[1], units]
        request = _Reserve(reservation_id, key, limits, entry, loop.create_future())
        self._asking.append(request)
        if self._asking_handle is None:
            self._asking_handle = loop.call_soon(self._send_reserves)
        return await request.answer

    def _send_reserves(self) -> None:
        """The reserves asked for since the last loop iteration go in one script."""
        self._asking_handle = None
        while self._asking:
            batch = self._asking[:RESERVES_PER_CALL]
            del self._asking[:RESERVES_PER_CALL]
            task = asyncio.get_running_loop().create_task(self._reserve_batch(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _reserve_argument(self, batch: list[_Reserve], carried: list[_Settlement]) -> bytes:
        """reserve.lua's argument: the reserves, the settlements they carry, and the plans
        they use, each once."""
        plans: dict[int, int] = {}  # id of a plan's description: its index in the argument
        described: list[list[list[str | int]]] = []
        entries = []
        for request in batch:
            reservation_id, ttl, key, plan, units = request.entry
            at = plans.get(id(plan))
            if at is None:
                at = plans[id(plan)] = len(described) + 1  # Lua counts from 1
                described.append(plan)
            entries.append([reservation_id, ttl, key, at, units])
        return orjson.dumps([self._now_arg(), entries, [s.entry for s in carried], described])

    async def _reserve_batch(self, batch: list[_Reserve]) -> None:
        carried = self._waiting[:CARRIED_PER_RESERVE]  # settled in the same script, first
        if carried:
            del self._waiting[:CARRIED_PER_RESERVE]
        argument = self._reserve_argument(batch, carried)
        try:
            text = await self._reserve(args=[argument])
        except BaseException as exc:
            if carried:
                self._retry(carried)  # applied or not: settling is idempotent by id
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        reply = [int(value) for value in text.split()]
        now, at = reply[0], 1
        for request in batch:
            n = len(request.limits)
            status, refused, retry_ms = reply[at : at + 3]
            values = reply[at + 3 : at + 3 + 3 * n]
            at += 3 + 3 * n
            if request.answer.cancelled():  # its caller went away: drop what it got
                if status == 1:
                    self._waiting.append(_Settlement.release(request.key, request.id))
                    self._arm_timer()
                continue
            if status == -1:
                request.answer.set_exception(
                    ReservationExists(f"reservation {request.id!r} is live")
                )
                continue
            if status == 1:
                request.answer.set_result(Admission(True, request.id, request.limits, values, now))
                continue
            request.answer.set_result(
                Admission(
                    False,
                    request.id,
                    request.limits,
                    values,
                    now,
                    refused_by=request.limits[refused - 1].counter,
                    retry_after_s=None if retry_ms < 0 else retry_ms / 1000,
                )
            )

    async def settle(self, reservation_id: str, actual: Mapping[str, float] | None = None) -> bool:
        settlement = _Settlement.of(self._reservation_key(reservation_id), reservation_id, actual)
        return await self._finish_reservations("settle", [settlement]) == 1

    async def release(self, reservation_id: str) -> bool:
        settlement = _Settlement.of(self._reservation_key(reservation_id), reservation_id)
        return await self._finish_reservations("release", [settlement]) == 1

    def settle_soon(self, reservation_id: str, actual: Mapping[str, float] | None = None) -> None:
        """Like :meth:`settle`, without a round trip of its own (see the module docstring):
        the next ``reserve`` of this process carries it, or a send after
        ``settle_delay_s``. Once by id like ``settle``; lost only with the process (then
        its holds expire, as for a call in flight)."""
        key = self._reservation_key(reservation_id)
        self._waiting.append(_Settlement.of(key, reservation_id, actual))
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._settle_delay_s, self._send_waiting)

    async def flush(self) -> None:
        """Send the settlements waiting now, and wait for those being sent (and for the
        reserves in flight, whose callers may have gone: their holds are released)."""
        while True:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._waiting:
                batch, self._waiting = self._waiting, []
                await self._send(batch)
            elif self._sending:
                await asyncio.gather(*self._sending, return_exceptions=True)
            else:
                return

    async def usage(self, limits: Sequence[Limit]) -> tuple[CounterState, ...]:
        keys: list[str] = []
        args: list[str | int] = [self._now_arg(), len(limits)]
        for limit in limits:
            counter_key, kind, length = self._counter_keys(limit)
            keys += (counter_key, counter_key + ":x")
            args += (kind, length)
        reply = [int(value) for value in (await self._usage(keys=keys, args=args)).split()]
        return counter_states(limits, reply[1:], reply[0])

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(self._prefix + "v:" + key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        ttl = None if ttl_s is None else ttl_ms(ttl_s)
        await self._redis.set(self._prefix + "v:" + key, value, px=ttl)

    async def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        ttl = 0 if ttl_s is None else ttl_ms(ttl_s)
        return int(await self._incr(keys=[self._prefix + "v:" + key], args=[by, ttl]))

    async def delete(self, key: str) -> bool:
        return bool(await self._redis.delete(self._prefix + "v:" + key))

    async def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=self._match(prefix), count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await self._redis.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(await self._redis.unlink(*batch))
        return deleted

    async def count_prefix(self, prefix: str) -> int:
        count = 0
        async for _key in self._redis.scan_iter(match=self._match(prefix), count=500):
            count += 1
        return count

    async def items_prefix(self, prefix: str) -> AsyncIterator[tuple[str, bytes]]:
        strip = len(self._prefix) + 2  # "v:"
        page: list[bytes] = []
        async for key in self._redis.scan_iter(match=self._match(prefix), count=500):
            page.append(key)
            if len(page) >= 500:
                async for item in self._values_of(page, strip):
                    yield item
                page = []
        if page:
            async for item in self._values_of(page, strip):
                yield item

    async def _values_of(self, keys: list[bytes], strip: int) -> AsyncIterator[tuple[str, bytes]]:
        pipe = self._redis.pipeline(transaction=False)  # not MGET: keys of any slot
        for key in keys:
            pipe.get(key)
        for key, value in zip(keys, await pipe.execute(), strict=True):
            if value is not None:  # expired since the scan
                yield key.decode()[strip:], value

    def _match(self, prefix: str) -> str:
        """A SCAN pattern for the values under ``prefix``, its glob characters escaped."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self._prefix + "v:" + prefix)
        return escaped + "*"

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None
    ) -> bool:
        absent = "1" if expected is None else "0"
        args = [absent, expected or b"", new, 0 if ttl_s is None else ttl_ms(ttl_s)]
        return bool(await self._compare_and_set(keys=[self._prefix + "v:" + key], args=args))

    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self._redis.publish(self._prefix + channel, message))

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return _RedisSubscription(self._redis, self._prefix + channel, self._subscriptions)

    async def aclose(self) -> None:
        """Send the settlements waiting, end the subscriptions still open, and close the
        client if it is ours."""
        with contextlib.suppress(Exception):  # logged; the holds then expire by themselves
            await self.flush()
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        if self._owns_client:
            await self._redis.aclose(close_connection_pool=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    def _counter_key(self, limit: Limit) -> str:
        return self._counter_keys(limit)[0]

    def _counter_keys(self, limit: Limit) -> tuple[str, str, int]:
        """A counter's hash key (its expiry index is that + ``:x``), window kind and
        length (cached)."""
        cached = self._keys.get((limit.counter, limit.window))
        if cached is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            kind, length, name = _window_code(limit)
            key = f"{self._prefix}c:{_tagged(limit.counter)}:{name}"
            cached = self._keys[(limit.counter, limit.window)] = (key, kind, length)
        return cached

    def _reservation_key(self, reservation_id: str) -> str:
        return f"{self._prefix}r:{_tagged(reservation_id)}"

    async def _finish_reservations(self, mode: str, batch: Sequence[_Settlement]) -> int:
        """Settle or release ``batch`` in one script; how many were live."""
        argument = orjson.dumps([self._now_arg(), mode, [s.entry for s in batch]])
        return int(await self._finish(args=[argument]))

    def _send_waiting(self) -> None:
        """The timer of ``settle_soon``: no reserve carried the settlements, send them."""
        self._timer = None
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Settlement]) -> None:
        try:
            await self._finish_reservations("settle", batch)
        except Exception:  # noqa: BLE001 - retried; applied or not, settling is idempotent
            self._retry(batch)

    def _retry(self, batch: list[_Settlement]) -> None:
        """Settlements whose script failed (or whose answer was lost) wait again, up to
        ``SETTLE_ATTEMPTS`` tries; after that their holds expire by themselves."""
        again = [s for s in batch if s.attempts + 1 < SETTLE_ATTEMPTS]
        if len(again) < len(batch):
            log.warning("limit_settle_failed", settlements=len(batch) - len(again))
        if not again:
            return
        for settlement in again:
            settlement.attempts += 1
        self._waiting[:0] = again
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._settle_delay_s, self._send_waiting)


class _Settlement:
    """A settlement waiting to be sent: its entry in a script's argument (the reservation's
    hash key, its id, the actual amounts in units by counter)."""

    __slots__ = ("attempts", "entry", "reservation_id")

    def __init__(self, reservation_id: str, entry: list[Any]) -> None:
        self.reservation_id = reservation_id
        self.entry = entry
        self.attempts = 0

    @classmethod
    def of(
        cls, key: str, reservation_id: str, actual: Mapping[str, float] | None = None
    ) -> _Settlement:
        units = settled_units(actual)  # checked now: a bad amount fails its caller
        return cls(reservation_id, [key, reservation_id, units])

    @classmethod
    def release(cls, key: str, reservation_id: str) -> _Settlement:
        return cls(reservation_id, [key, reservation_id, False])


class _Reserve:
    """A reserve waiting for the script that carries it."""

    __slots__ = ("answer", "entry", "id", "key", "limits")

    def __init__(
        self,
        reservation_id: str,
        key: str,
        limits: Sequence[Limit],
        entry: list[Any],
        answer: asyncio.Future[Admission],
    ) -> None:
        self.id = reservation_id
        self.key = key
        self.limits = limits
        self.entry = entry
        self.answer = answer


class _RedisSubscription:
    """A pub/sub connection of its own for one channel, subscribed on entry."""

    def __init__(self, client: Any, channel: str, registry: set[_RedisSubscription]) -> None:
        self._pubsub = client.pubsub()
        self._channel = channel
        self._registry = registry
        self._closed = False

    async def __aenter__(self) -> _RedisSubscription:
        await self._pubsub.subscribe(self._channel)
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            while True:  # the confirmation: from here on, every message published is ours
                message = await self._pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "subscribe":
                    break
        self._registry.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._registry.discard(self)
        if not self._closed:
            self._closed = True
            await self._pubsub.aclose()

    def __aiter__(self) -> _RedisSubscription:
        return self

    async def __anext__(self) -> bytes:
        from redis.exceptions import RedisError

        while not self._closed:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=None
                )
            except (RedisError, OSError):
                if self._closed:  # closed under a blocked read
                    break
                raise
            if message is not None and message["type"] == "message":
                data: bytes = message["data"]
                return data
        raise StopAsyncIteration
