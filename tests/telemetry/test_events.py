"""Lifecycle events: CloudEvents 1.0 JSON on Redis Streams and NATS JetStream, a bounded
queue that never holds up a request, and the events a running gateway publishes.

Real Redis and NATS (``GUARITA_TEST_REDIS_URL``, ``GUARITA_TEST_NATS_URL``); each test
uses streams of its own and deletes them. Outages are real too: closed ports, and
private ``redis-server``/``nats-server`` processes stopped and started by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from jsonschema import Draft202012Validator
from nats.js.errors import NotFoundError

from guarita.runtime import Runtime
from guarita.telemetry import events
from guarita.telemetry.events import EventPublisher, NatsSink, RedisStreamSink
from tests.helpers import Process, base_env, free_port
from tests.telemetry.support import (
    CHAT,
    EVENTS_DOC,
    NATS_URL,
    REDIS_URL,
    assert_valid_event,
    load_schema,
    make_settings,
    poll,
    read_stream,
    serve,
    unique,
)

TASK_ID = "task_" + "ab" * 12


def sample_events() -> list[tuple[str, dict[str, Any]]]:
    """One event of each type, with data shaped like the gateway's own."""
    return [
        (
            events.REQUEST_COMPLETED,
            {
                "record_id": "0123456789abcdef0123456789abcdef",
                "request_id": "req-1",
                "created_at": datetime.now(UTC).isoformat(),
                "key_id": None,
                "endpoint": "chat.completions",
                "agent": None,
                "model": "m",
                "provider": "scripted",
                "upstream_model": "m",
                "status": "success",
                "status_code": 200,
                "error_type": None,
                "stream": False,
                "input_tokens": 3,
                "output_tokens": 5,
                "cost_usd": 0.000125,
                "latency_ms": 1.25,
                "session_id": None,
            },
        ),
        (events.TASK_QUEUED, {"task_id": TASK_ID, "agent": "a", "request_id": "req-1"}),
        (events.TASK_STARTED, {"task_id": TASK_ID, "agent": "a", "attempt": 1}),
        (
            events.TASK_FAILED,
            {"task_id": TASK_ID, "agent": "a", "attempt": 1, "final": False, "error": "boom"},
        ),
        (events.TASK_FINISHED, {"task_id": TASK_ID, "agent": "a", "attempt": 2}),
    ]


def assert_envelope(event: dict[str, Any], event_type: str, data: dict[str, Any]) -> None:
    assert event["specversion"] == "1.0"
    assert event["type"] == event_type
    assert event["datacontenttype"] == "application/json"
    assert event["source"].startswith("guarita/")
    assert re.fullmatch(r"[0-9a-f]{32}", event["id"])
    stamp = datetime.fromisoformat(event["time"])
    assert stamp.tzinfo is not None and stamp.utcoffset() is not None
    assert event["data"] == data


# -- The schema and its documentation ---------------------------------------------------


def test_the_schema_in_the_doc_is_the_schema_file() -> None:
    text = EVENTS_DOC.read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    schemas = [json.loads(b) for b in blocks if '"$schema"' in b]
    assert schemas == [load_schema()], "docs/events.md must embed docs/events.schema.json as is"
    for event_type in (
        events.REQUEST_COMPLETED,
        events.TASK_QUEUED,
        events.TASK_STARTED,
        events.TASK_FINISHED,
        events.TASK_FAILED,
        events.BATCH_ENDED,
    ):
        assert f"`{event_type}`" in text


def test_the_example_events_in_the_doc_match_the_schema(
    event_validator: Draft202012Validator,
) -> None:
    blocks = re.findall(r"```json\n(.*?)```", EVENTS_DOC.read_text(), flags=re.DOTALL)
    examples = [json.loads(b) for b in blocks if '"specversion"' in b and '"$schema"' not in b]
    assert examples
    for example in examples:
        assert_valid_event(event_validator, example)


def test_the_schema_rejects_what_it_should(event_validator: Draft202012Validator) -> None:
    event_type, data = sample_events()[0]
    good = {
        "specversion": "1.0",
        "id": "0" * 32,
        "type": event_type,
        "source": "guarita/host",
        "time": "2025-01-31T12:00:00.5+00:00",
        "datacontenttype": "application/json",
        "data": data,
    }
    assert_valid_event(event_validator, good)
    bad = [
        {**good, "time": "2025-01-31T12:00:00"},  # no offset
        {**good, "specversion": "0.3"},
        {**good, "type": "guarita.unknown"},
        {**good, "data": {**data, "input_tokens": -1}},
        {**good, "data": {k: v for k, v in data.items() if k != "cost_usd"}},
        {**good, "type": events.TASK_FAILED, "data": {"task_id": TASK_ID, "agent": "a"}},
    ]
    for event in bad:
        assert not event_validator.is_valid(event), event


# -- Redis Streams ----------------------------------------------------------------------


async def test_redis_sink_writes_cloudevents_to_the_stream(
    redis_client: Any, redis_stream: str, event_validator: Draft202012Validator
) -> None:
    publisher = EventPublisher(RedisStreamSink(REDIS_URL, redis_stream))
    await publisher.start()
    try:
        published = sample_events()
        for event_type, data in published:
            publisher.publish(event_type, data)
        await publisher.flush()
        received = await read_stream(redis_client, redis_stream)
    finally:
        await publisher.aclose()

    assert [e["type"] for e in received] == [t for t, _ in published]
    for event, (event_type, data) in zip(received, published, strict=True):
        assert_envelope(event, event_type, data)
        assert_valid_event(event_validator, event)
    assert len({e["id"] for e in received}) == len(received)
    assert publisher.sent == len(published) and publisher.dropped == 0


async def test_flush_beside_the_background_sender_sends_each_event_once(
    redis_client: Any, redis_stream: str
) -> None:
    """flush() while the background sender is busy: no event twice, none lost, no crash."""
    publisher = EventPublisher(RedisStreamSink(REDIS_URL, redis_stream), batch=100)
    await publisher.start()
    try:
        for round_ in range(3):
            for i in range(250):
                publisher.publish(events.TASK_QUEUED, {"round": round_, "i": i})
            await publisher.flush()
        received = await read_stream(redis_client, redis_stream)
        assert [(e["data"]["round"], e["data"]["i"]) for e in received] == [
            (r, i) for r in range(3) for i in range(250)
        ]
        assert publisher.sent == 750
    finally:
        await publisher.aclose()  # would re-raise a crash of the background sender


async def _close_within(publisher: EventPublisher, deadline_s: float = 30.0) -> None:
    """aclose() must return by itself. (Not asyncio.wait_for: a cancelled aclose() still
    returns normally, hiding a hang.)"""
    closing = asyncio.create_task(publisher.aclose())
    done, _ = await asyncio.wait({closing}, timeout=deadline_s)
    if closing not in done:
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        raise AssertionError("aclose() hung: the background sender never ended")
    closing.result()


class GatedRedisSink(RedisStreamSink):
    """The real Redis sink, whose send() returns only when the test opens a gate."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__(url, stream)
        self.written = asyncio.Event()
        self.gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(self, events: list[dict[str, Any]]) -> None:
        await super().send(events)
        self.written.set()
        await self.gate


async def test_closing_as_a_send_completes_returns(redis_client: Any, redis_stream: str) -> None:
    """aclose() cancels the sender just as its send completes (the reply is in): Python
    3.11's wait_for then swallows the cancellation, and aclose() must still return."""
    sink = GatedRedisSink(REDIS_URL, redis_stream)
    publisher = EventPublisher(sink)
    await publisher.start()
    publisher.publish(events.TASK_QUEUED, {"task_id": TASK_ID, "agent": "a"})
    await asyncio.wait_for(sink.written.wait(), timeout=30)
    sink.gate.set_result(None)  # the send finishes on the loop's next turn...
    await _close_within(publisher)  # ...in which aclose() has cancelled the sender
    assert await redis_client.xlen(redis_stream) == 1


async def test_publishing_without_a_sink_is_a_no_op() -> None:
    publisher = EventPublisher(None, max_queue=1)
    await publisher.start()
    for _ in range(10):
        publisher.publish(events.TASK_QUEUED, {"task_id": TASK_ID})
    await publisher.flush()
    await publisher.aclose()
    assert not publisher.enabled
    assert publisher.sent == 0 and publisher.dropped == 0


# -- NATS JetStream ---------------------------------------------------------------------


async def test_nats_sink_creates_the_stream_and_publishes_by_type(
    nats_stream: str, event_validator: Draft202012Validator
) -> None:
    conn = await nats.connect(NATS_URL, connect_timeout=5)
    js = conn.jetstream()
    publisher = EventPublisher(NatsSink(NATS_URL, nats_stream))
    try:
        with pytest.raises(NotFoundError):
            await js.stream_info(nats_stream)

        await publisher.start()
        published = sample_events()
        for event_type, data in published:
            publisher.publish(event_type, data)
        await publisher.flush()

        info = await js.stream_info(nats_stream)
        assert info.config.subjects == [f"{nats_stream}.>"]
        assert info.state.messages == len(published)

        everything = await js.pull_subscribe(f"{nats_stream}.>", stream=nats_stream)
        messages = await fetch(everything, len(published))
        assert [m.subject for m in messages] == [f"{nats_stream}.{t}" for t, _ in published]
        for message, (event_type, data) in zip(messages, published, strict=True):
            event = orjson.loads(message.data)
            assert_envelope(event, event_type, data)
            assert_valid_event(event_validator, event)
            await message.ack()

        # the subject hierarchy lets a consumer take one kind of event
        tasks_only = await js.pull_subscribe(f"{nats_stream}.guarita.task.>", stream=nats_stream)
        task_messages = await fetch(tasks_only, 4)
        assert [orjson.loads(m.data)["type"] for m in task_messages] == [
            t for t, _ in published if t.startswith("guarita.task.")
        ]
    finally:
        await publisher.aclose()
        await conn.close()


async def test_nats_sink_uses_a_stream_that_exists(nats_stream: str) -> None:
    conn = await nats.connect(NATS_URL, connect_timeout=5)
    js = conn.jetstream()
    publisher = EventPublisher(NatsSink(NATS_URL, nats_stream))
    try:
        await js.add_stream(name=nats_stream, subjects=[f"{nats_stream}.>"], max_msgs=1000)
        await publisher.start()
        publisher.publish(events.TASK_QUEUED, {"task_id": TASK_ID, "agent": "a"})
        await publisher.flush()
        info = await js.stream_info(nats_stream)
        assert info.state.messages == 1
        assert info.config.max_msgs == 1000  # left as the operator made it
        assert publisher.sent == 1
    finally:
        await publisher.aclose()
        await conn.close()


async def fetch(subscription: Any, count: int, within: float = 30.0) -> list[Any]:
    """``count`` messages from a pull consumer, fetching until a deadline."""
    messages: list[Any] = []

    async def more() -> bool:
        with contextlib.suppress(nats.errors.TimeoutError):
            messages.extend(await subscription.fetch(count - len(messages), timeout=1))
        return len(messages) >= count

    await poll(more, what=f"{count} messages", within=within)
    return messages


# -- A sink that is down ----------------------------------------------------------------


class CountingRedisSink(RedisStreamSink):
    """The real Redis sink, counting its attempts to send."""

    attempts = 0

    async def send(self, events: list[dict[str, Any]]) -> None:
        self.attempts += 1
        await super().send(events)


class CountingNatsSink(NatsSink):
    """The real NATS sink, counting its attempts to send."""

    attempts = 0

    async def send(self, events: list[dict[str, Any]]) -> None:
        self.attempts += 1
        await super().send(events)


def closed_port_sink(kind: str) -> CountingRedisSink | CountingNatsSink:
    port = free_port()  # bound and released: nothing listens there
    if kind == "redis":
        return CountingRedisSink(f"redis://127.0.0.1:{port}/0", unique())
    return CountingNatsSink(f"nats://127.0.0.1:{port}", unique())


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_a_sink_that_is_down_never_blocks_and_the_queue_stays_bounded(kind: str) -> None:
    sink = closed_port_sink(kind)
    drops: list[None] = []
    publisher = EventPublisher(sink, max_queue=10, on_drop=lambda: drops.append(None))
    await publisher.start()

    # publish() is a plain function: it cannot wait on the sink
    assert not inspect.iscoroutinefunction(EventPublisher.publish)
    event_type, data = sample_events()[1]
    results = [publisher.publish(event_type, data) for _ in range(1000)]
    assert results == [None] * 1000
    assert publisher.dropped == 990
    assert len(drops) == 990

    # the background sender keeps trying, and its failures stay inside it
    await poll(lambda: _at_least(sink, 2), what="the sender to retry after a failure")
    assert publisher.sent == 0
    publisher.publish(event_type, data)  # still refused at once: the queue is full
    assert publisher.dropped == 991 and len(drops) == 991

    await asyncio.wait_for(publisher.aclose(), timeout=60)  # bounded by its own timeouts
    assert publisher.sent == 0


async def _at_least(sink: CountingRedisSink | CountingNatsSink, attempts: int) -> bool:
    return sink.attempts >= attempts


async def test_requests_go_on_while_the_sink_is_down_and_drops_are_counted(
    tmp_path: Path,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(
        tmp_path, events={"sink": "redis", "url": closed, "stream": unique(), "max_queue": 5}
    )
    runtime = Runtime(settings)
    async with serve(runtime) as client:
        for _ in range(20):
            response = await client.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 200
        assert runtime.events.dropped == 15  # 20 request events, 5 waiting in the queue
        assert runtime.metrics.registry.get_sample_value("guarita_events_dropped_total") == 15
        metrics = (await client.get("/metrics")).text
        assert "guarita_events_dropped_total 15.0" in metrics


async def test_events_queued_while_redis_is_down_arrive_when_it_is_back(
    tmp_path: Path, event_validator: Draft202012Validator
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    import redis.asyncio as redis

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    stream = unique()
    sink = CountingRedisSink(url, stream)
    publisher = EventPublisher(sink)
    await publisher.start()
    server = Process(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        env=base_env(tmp_path),
        log_path=tmp_path / "redis.log",
    )  # fmt: skip
    client = redis.from_url(url)
    try:
        published = sample_events()
        for event_type, data in published:
            publisher.publish(event_type, data)
        await poll(lambda: _at_least(sink, 1), what="a first failed attempt")
        assert publisher.sent == 0

        server.start()

        async def delivered() -> list[dict[str, Any]]:
            try:
                return await read_stream(client, stream)
            except (redis.ConnectionError, redis.BusyLoadingError):
                return []

        received = await poll(delivered, what="the queued events", within=60)
        assert [e["type"] for e in received] == [t for t, _ in published]
        for event in received:
            assert_valid_event(event_validator, event)
    finally:
        await publisher.aclose()
        await client.aclose()
        server.stop()


async def test_nats_sink_recovers_after_an_outage_longer_than_its_reconnects(
    tmp_path: Path,
) -> None:
    """The NATS client gives up after its reconnect attempts and closes for good; the sink
    must connect afresh once the server is back."""
    if shutil.which("nats-server") is None:
        pytest.skip("nats-server is not installed")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    args = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")]
    stream = unique()
    sink = NatsSink(url, stream)
    publisher = EventPublisher(sink)

    def start_server(n: int) -> Process:
        server = Process(args, env=base_env(tmp_path), log_path=tmp_path / f"nats-{n}.log")
        server.start()
        return server

    async def messages() -> int:
        try:
            conn = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        except Exception:  # not up yet
            return 0
        try:
            return int((await conn.jetstream().stream_info(stream)).state.messages)
        except NotFoundError:
            return 0
        finally:
            await conn.close()

    server = start_server(1)
    try:
        await poll(lambda: nats_up(url), what="nats-server to start")
        await publisher.start()
        publisher.publish(events.TASK_QUEUED, {"n": 1})
        await publisher.flush()
        assert await messages() == 1

        server.stop()
        publisher.publish(events.TASK_QUEUED, {"n": 2})

        async def client_gave_up() -> bool:
            return sink._conn is not None and sink._conn.is_closed

        await poll(client_gave_up, what="the NATS client to close after its reconnects")

        server = start_server(2)
        await poll(lambda: _reached(messages, 2), what="the event held during the outage")
        await poll(lambda: _sent(publisher, 2), what="the publisher to count it as sent")
    finally:
        await publisher.aclose()
        server.stop()


async def nats_up(url: str) -> bool:
    try:
        conn = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    except Exception:  # not up yet
        return False
    await conn.close()
    return True


async def _sent(publisher: EventPublisher, n: int) -> bool:
    return publisher.sent == n


async def _reached(count: Any, n: int) -> bool:
    return bool(await count() >= n)


# -- End to end through a running gateway -----------------------------------------------


def gateway_settings(tmp_path: Path, stream: str, **overrides: Any) -> Any:
    return make_settings(
        tmp_path,
        models={
            "m": {"provider": "scripted", "price_input_per_1m": 2.0, "price_output_per_1m": 4.0},
            "broken": {"provider": "scripted", "options": {"fail_every": 1}},
        },
        agents={"a": {"model": "m"}, "b": {"model": "broken"}},
        events={"sink": "redis", "url": REDIS_URL, "stream": stream},
        tasks={"max_attempts": 2, "retry_backoff_s": 0},
        **overrides,
    )


async def events_where(
    redis_client: Any, stream: str, match: Any, count: int = 1
) -> list[dict[str, Any]]:
    """Poll the stream until ``count`` events satisfy ``match``; returns them, in order."""

    async def found() -> list[dict[str, Any]]:
        hits = [e for e in await read_stream(redis_client, stream) if match(e)]
        return hits if len(hits) >= count else []

    return await poll(found, what=f"{count} matching event(s) on {stream}")


async def test_a_chat_completion_publishes_request_completed(
    tmp_path: Path,
    redis_client: Any,
    redis_stream: str,
    event_validator: Draft202012Validator,
) -> None:
    request_id = "req-" + secrets.token_hex(8)
    async with serve(Runtime(gateway_settings(tmp_path, redis_stream))) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": request_id}
        )
        assert response.status_code == 200
        usage = response.json()["usage"]
        (event,) = await events_where(
            redis_client,
            redis_stream,
            lambda e: (
                e["type"] == events.REQUEST_COMPLETED and e["data"]["request_id"] == request_id
            ),
        )

    data = event["data"]
    assert data["model"] == "m"
    assert data["status"] == "success" and data["status_code"] == 200
    assert data["endpoint"] == "chat.completions" and data["provider"] == "scripted"
    assert data["input_tokens"] == usage["prompt_tokens"] > 0
    assert data["output_tokens"] == usage["completion_tokens"] > 0
    expected_cost = (usage["prompt_tokens"] * 2.0 + usage["completion_tokens"] * 4.0) / 1e6
    assert data["cost_usd"] == pytest.approx(expected_cost)
    assert data["stream"] is False and data["error_type"] is None
    for e in await read_stream(redis_client, redis_stream):
        assert_valid_event(event_validator, e)


async def test_a_failed_call_publishes_request_completed_with_the_error(
    tmp_path: Path,
    redis_client: Any,
    redis_stream: str,
    event_validator: Draft202012Validator,
) -> None:
    request_id = "req-" + secrets.token_hex(8)
    async with serve(Runtime(gateway_settings(tmp_path, redis_stream))) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "model": "broken"},
            headers={"x-request-id": request_id},
        )
        assert response.status_code >= 500
        (event,) = await events_where(
            redis_client, redis_stream, lambda e: e["data"].get("request_id") == request_id
        )
    assert event["type"] == events.REQUEST_COMPLETED
    data = event["data"]
    assert data["status"] == "error" and data["status_code"] == response.status_code
    assert data["error_type"] == response.json()["error"]["type"]
    assert data["input_tokens"] == data["output_tokens"] == 0 and data["cost_usd"] == 0
    assert_valid_event(event_validator, event)


async def test_a_task_publishes_queued_started_and_finished(
    tmp_path: Path,
    redis_client: Any,
    redis_stream: str,
    event_validator: Draft202012Validator,
) -> None:
    request_id = "req-" + secrets.token_hex(8)
    async with serve(Runtime(gateway_settings(tmp_path, redis_stream))) as client:
        response = await client.post(
            "/api/tasks", json={"message": "summarise"}, headers={"x-request-id": request_id}
        )
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        lifecycle = await events_where(
            redis_client,
            redis_stream,
            lambda e: e["type"].startswith("guarita.task.") and e["data"]["task_id"] == task_id,
            count=3,
        )
        # the task's own model call is a request too, attributed to the task
        (call,) = await events_where(
            redis_client,
            redis_stream,
            lambda e: e["type"] == events.REQUEST_COMPLETED and e["data"]["endpoint"] == "task",
        )

    assert [e["type"] for e in lifecycle] == [
        events.TASK_QUEUED,
        events.TASK_STARTED,
        events.TASK_FINISHED,
    ]
    queued, started, finished = (e["data"] for e in lifecycle)
    assert queued == {"task_id": task_id, "agent": "a", "request_id": request_id}
    assert started == {"task_id": task_id, "agent": "a", "attempt": 1}
    assert finished == {"task_id": task_id, "agent": "a", "attempt": 1}
    assert call["data"]["agent"] == "a" and call["data"]["status"] == "success"
    for e in await read_stream(redis_client, redis_stream):
        assert_valid_event(event_validator, e)


async def test_a_failing_task_publishes_a_retry_then_a_final_failure(
    tmp_path: Path,
    redis_client: Any,
    redis_stream: str,
    event_validator: Draft202012Validator,
) -> None:
    async with serve(Runtime(gateway_settings(tmp_path, redis_stream))) as client:
        response = await client.post("/api/tasks", json={"message": "go", "agent": "b"})
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        await events_where(
            redis_client,
            redis_stream,
            lambda e: e["type"] == events.TASK_FAILED and e["data"]["final"],
        )
        task = (await client.get(f"/api/tasks/{task_id}")).json()

    lifecycle = [
        (e["type"], e["data"].get("attempt"), e["data"].get("final"))
        for e in await read_stream(redis_client, redis_stream)
        if e["type"].startswith("guarita.task.")
    ]
    assert lifecycle == [
        (events.TASK_QUEUED, None, None),
        (events.TASK_STARTED, 1, None),
        (events.TASK_FAILED, 1, False),
        (events.TASK_STARTED, 2, None),
        (events.TASK_FAILED, 2, True),
    ]
    assert task["status"] == "failed" and task["attempts"] == 2
    for e in await read_stream(redis_client, redis_stream):
        assert_valid_event(event_validator, e)


async def test_the_nats_sink_end_to_end(
    tmp_path: Path, nats_stream: str, event_validator: Draft202012Validator
) -> None:
    settings = make_settings(
        tmp_path, events={"sink": "nats", "url": NATS_URL, "stream": nats_stream}
    )
    conn = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        async with serve(Runtime(settings)) as client:
            response = await client.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            js = conn.jetstream()

            async def stream_exists() -> bool:
                try:
                    await js.stream_info(nats_stream)
                except NotFoundError:
                    return False
                return True

            await poll(stream_exists, what="the sink to create the stream")
            sub = await js.pull_subscribe(
                f"{nats_stream}.{events.REQUEST_COMPLETED}", stream=nats_stream
            )
            (message,) = await fetch(sub, 1)
        event = orjson.loads(message.data)
        assert event["data"]["request_id"] == request_id
        assert_valid_event(event_validator, event)
    finally:
        await conn.close()


def test_make_publisher_follows_the_settings(tmp_path: Path) -> None:
    none = events.make_publisher(make_settings(tmp_path).events, None)
    assert not none.enabled
    redis_settings = make_settings(tmp_path, redis_url=REDIS_URL, events={"sink": "redis"})
    publisher = events.make_publisher(redis_settings.events, redis_settings.redis_url)
    assert isinstance(publisher._sink, RedisStreamSink)
    assert publisher._sink.stream == "guarita-events"
    nats_settings = make_settings(tmp_path, events={"sink": "nats", "stream": "s1"})
    publisher = events.make_publisher(nats_settings.events, None)
    assert isinstance(publisher._sink, NatsSink) and publisher._sink.stream == "s1"
