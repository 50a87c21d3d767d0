"""Lifecycle events (request completed, task queued/started/finished/failed) published to
a sink chosen by settings: none, Redis Streams or NATS JetStream.

Events are CloudEvents 1.0 in JSON (schema: ``docs/events.md``). Publishing never waits on
the sink: events go to a bounded in-memory queue that a background task sends in
batches; when the sink is slow or down the queue fills and further events are dropped
and counted (``guarita_events_dropped_total``), so requests are never held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import structlog

from guarita.aio import cancel_and_wait
from guarita.providers.base import missing_extra
from guarita.settings import EventSettings

log = structlog.get_logger("guarita.events")

REQUEST_COMPLETED = "guarita.request.completed"
TASK_QUEUED = "guarita.task.queued"
TASK_STARTED = "guarita.task.started"
TASK_FINISHED = "guarita.task.finished"
TASK_FAILED = "guarita.task.failed"
BATCH_ENDED = "guarita.batch.ended"
DRIFT_LEVEL_CHANGED = "guarita.drift.level_changed"
DRIFT_REVIEW_REQUESTED = "guarita.drift.review_requested"


class EventSink(Protocol):
    async def start(self) -> None: ...

    async def send(self, events: list[dict[str, Any]]) -> None: ...

    async def aclose(self) -> None: ...


class RedisStreamSink:
    """XADD each event to one stream (trimmed to about ``maxlen`` entries)."""

    def __init__(self, url: str, stream: str, *, maxlen: int = 100_000) -> None:
        try:
            import redis.asyncio as redis
        except ImportError as exc:
            raise missing_extra("redis", "scale") from exc
        self._redis: Any = redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.stream = stream
        self._maxlen = maxlen

    async def start(self) -> None:
        return None

    async def send(self, events: list[dict[str, Any]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self.stream, {"type": event["type"], "event": orjson.dumps(event)},
                          maxlen=self._maxlen, approximate=True)  # fmt: skip
            await pipe.execute()

    async def aclose(self) -> None:
        await self._redis.aclose()


class NatsSink:
    """Publish each event to JetStream subject ``<stream>.<type>``, creating the stream."""

    def __init__(self, url: str, stream: str) -> None:
        try:
            import nats
        except ImportError as exc:
            raise missing_extra("nats-py", "scale") from exc
        self._nats = nats
        self._url = url
        self.stream = stream
        self._conn: Any = None
        self._js: Any = None

    async def start(self) -> None:
        return None

    async def _connect(self) -> Any:
        # After an outage longer than its reconnect attempts the client closes for good:
        # connect afresh, or the sink would stay down after NATS is back.
        if self._js is None or self._conn.is_closed:
            self._conn = await self._nats.connect(
                self._url, connect_timeout=2, max_reconnect_attempts=1
            )
            self._js = self._conn.jetstream(timeout=2)
            with contextlib.suppress(Exception):  # the stream may exist already
                await self._js.add_stream(name=self.stream, subjects=[f"{self.stream}.>"])
        return self._js

    async def send(self, events: list[dict[str, Any]]) -> None:
        js = await self._connect()
        for event in events:
            await js.publish(f"{self.stream}.{event['type']}", orjson.dumps(event))

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class EventPublisher:
    def __init__(
        self,
        sink: EventSink | None,
        *,
        max_queue: int = 10_000,
        batch: int = 100,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink
        self._on_drop = on_drop
        self._queue: deque[dict[str, Any]] = deque()
        self._max = max_queue
        self._batch = batch
        self._wakeup = asyncio.Event()
        # flush() may run beside the background sender: one batch in flight at a time, or
        # both would send the same events and then each pop them (losing later ones).
        self._sending = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._source = f"guarita/{socket.gethostname()}"
        self.dropped = 0
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._sink is not None

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        """Queue one event; never blocks, drops (and counts) when the queue is full."""
        if self._sink is None:
            return
        if len(self._queue) >= self._max:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return
        self._queue.append(
            {
                "specversion": "1.0",
                "id": uuid.uuid4().hex,
                "type": event_type,
                "source": self._source,
                "time": datetime.now(UTC).isoformat(),
                "datacontenttype": "application/json",
                "data": data,
            }
        )
        self._wakeup.set()

    async def start(self) -> None:
        if self._sink is not None:
            await self._sink.start()
            self._task = asyncio.create_task(self._run(), name="event-publisher")

    async def _run(self) -> None:
        backoff = 0.1
        # The loop also ends on _closing: a cancellation can be lost (on Python 3.11
        # wait_for, here or inside a client library, swallows it when the awaited send
        # completes at that moment), and aclose() would then wait for this task forever.
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and not self._closing:
                if not await self._send_batch():
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    break
                backoff = 0.1

    async def _send_batch(self) -> bool:
        assert self._sink is not None
        async with self._sending:
            batch = [self._queue[i] for i in range(min(self._batch, len(self._queue)))]
            if not batch:  # sent by the other sender while this one waited
                return True
            try:
                await asyncio.wait_for(self._sink.send(batch), timeout=5)
            except Exception as exc:  # noqa: BLE001 - a sink failure must never reach a request
                log.warning(
                    "event_sink_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    queued=len(self._queue),
                )
                self._wakeup.set()
                return False
            for _ in batch:
                self._queue.popleft()
            self.sent += len(batch)
            return True

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, within ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._queue and asyncio.get_running_loop().time() < deadline:
            if not await self._send_batch():
                await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        if self._task is not None:
            self._closing = True
            self._wakeup.set()
            await cancel_and_wait(self._task)
        if self._sink is not None:
            await self.flush(timeout_s=3)
            if self._queue:
                log.warning("events_not_sent", count=len(self._queue))
            await self._sink.aclose()


def make_publisher(
    settings: EventSettings, redis_url: str | None, *, on_drop: Callable[[], None] | None = None
) -> EventPublisher:
    sink: EventSink | None = None
    if settings.sink == "redis":
        url = settings.url or redis_url
        assert url is not None  # checked by Settings
        sink = RedisStreamSink(url, settings.stream)
    elif settings.sink == "nats":
        sink = NatsSink(settings.url or "nats://127.0.0.1:4222", settings.stream)
    return EventPublisher(sink, max_queue=settings.max_queue, on_drop=on_drop)
