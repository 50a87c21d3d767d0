"""OpenTelemetry tracing: one trace per request from the server span down to the model
call, GenAI attributes, streams, the context carried into tasks, and nothing when off.

Spans are collected with the SDK's in-memory exporter handed to the runtime
(``Runtime(settings, span_exporter=...)``); the app runs in-process over ASGITransport.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guarita.runtime import Runtime
from guarita.types import Call, Caller
from tests.telemetry.support import CHAT, REDIS_URL, make_settings, poll, serve, unique


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.clear()


@pytest.fixture
async def traced(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> AsyncIterator[tuple[Runtime, Any]]:
    runtime = Runtime(make_settings(tmp_path), span_exporter=exporter)
    async with serve(runtime) as client:
        yield runtime, client


Spans = InMemorySpanExporter | Sequence[ReadableSpan]


def finished(spans: Spans) -> list[ReadableSpan]:
    if isinstance(spans, InMemorySpanExporter):
        return list(spans.get_finished_spans())
    return list(spans)


def named(spans: Spans, name: str) -> list[ReadableSpan]:
    return [s for s in finished(spans) if s.name == name]


def one(spans: Spans, name: str) -> ReadableSpan:
    found = named(spans, name)
    names = [s.name for s in finished(spans)]
    assert len(found) == 1, f"expected one {name!r} span, finished spans: {names}"
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def is_descendant(span: ReadableSpan, ancestor: ReadableSpan, spans: Spans) -> bool:
    by_id = {span_id(s): s for s in finished(spans)}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == span_id(ancestor):
            return True
        current = by_id.get(current.parent.span_id)
    return False


def traceparent() -> tuple[str, int, int]:
    """A W3C traceparent header of a (sampled) caller's span: (header, trace id, span id)."""
    trace_hex, span_hex = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_hex}-{span_hex}-01", int(trace_hex, 16), int(span_hex, 16)


# -- A chat completion ------------------------------------------------------------------


async def test_the_pipeline_stages_and_the_model_call_form_a_chain(
    traced: tuple[Runtime, Any], exporter: InMemorySpanExporter
) -> None:
    _runtime, client = traced
    response = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.5})
    assert response.status_code == 200
    usage = response.json()["usage"]

    recording = one(exporter, "guarita.stage.recording")
    accounting = one(exporter, "guarita.stage.accounting")
    chat = one(exporter, "chat m")
    # recording is the outermost stage, accounting inside it; the model call is innermost
    assert is_descendant(accounting, recording, exporter)  # other stages may sit between
    assert is_descendant(chat, accounting, exporter)
    stage_spans = [s for s in finished(exporter) if s.name.startswith("guarita.stage.")]
    assert all(is_descendant(chat, stage, exporter) for stage in stage_spans)
    assert trace_id(recording) == trace_id(accounting) == trace_id(chat)

    assert chat.kind is SpanKind.CLIENT
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == "scripted"
    assert attributes["gen_ai.request.model"] == "m"
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert chat.status.status_code is not trace.StatusCode.ERROR


async def test_a_failed_model_call_marks_its_span_as_an_error(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    settings = make_settings(
        tmp_path,
        models={"m": {"provider": "scripted", "options": {"fail_every": 1}}},
    )
    async with serve(Runtime(settings, span_exporter=exporter)) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code >= 500
    chat = one(exporter, "chat m")
    assert chat.status.status_code is trace.StatusCode.ERROR
    assert any(event.name == "exception" for event in chat.events)


async def test_a_chat_completion_is_one_trace_under_a_server_span(
    traced: tuple[Runtime, Any], exporter: InMemorySpanExporter
) -> None:
    _runtime, client = traced
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200

    server = one(exporter, "POST /v1/chat/completions")
    auth = one(exporter, "guarita.auth")
    recording = one(exporter, "guarita.stage.recording")
    accounting = one(exporter, "guarita.stage.accounting")
    chat = one(exporter, "chat m")

    assert server.kind is SpanKind.SERVER
    assert server.parent is None  # no traceparent came in: the request starts the trace
    attributes = dict(server.attributes or {})
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200

    assert parent_id(auth) == span_id(server)
    assert parent_id(recording) == span_id(server)
    assert is_descendant(accounting, recording, exporter)  # other stages may sit between
    assert is_descendant(chat, accounting, exporter)
    assert {trace_id(s) for s in exporter.get_finished_spans()} == {trace_id(server)}


async def test_an_incoming_traceparent_is_honoured(
    traced: tuple[Runtime, Any], exporter: InMemorySpanExporter
) -> None:
    _runtime, client = traced
    header, caller_trace, caller_span = traceparent()
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"traceparent": header})
    assert response.status_code == 200

    server = one(exporter, "POST /v1/chat/completions")
    assert trace_id(server) == caller_trace
    assert parent_id(server) == caller_span
    assert server.parent is not None and server.parent.is_remote
    assert trace_id(one(exporter, "chat m")) == caller_trace


# -- Streams ----------------------------------------------------------------------------


async def test_a_streamed_calls_span_ends_when_the_stream_does_with_its_usage(
    traced: tuple[Runtime, Any], exporter: InMemorySpanExporter
) -> None:
    runtime, _client = traced
    call = Call(
        request_id="req-stream",
        model="m",
        body={"messages": [{"role": "user", "content": "count to five please"}]},
        caller=Caller.anonymous(),
        stream=True,
        include_usage=True,
    )
    reply = await runtime.pipeline(call)
    assert named(exporter, "chat m") == []  # nothing has been read yet

    chunks = reply.chunks()
    await anext(chunks)
    await anext(chunks)
    assert named(exporter, "chat m") == []  # half way through
    rest = [chunk async for chunk in chunks]
    assert rest

    chat = one(exporter, "chat m")
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == reply.usage.input_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == reply.usage.output_tokens > 0
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    # the stage spans ended when the stages returned; the call's span outlived them
    accounting = one(exporter, "guarita.stage.accounting")
    assert chat.end_time is not None and accounting.end_time is not None
    assert chat.end_time > accounting.end_time
    assert is_descendant(chat, accounting, exporter)


async def test_a_streamed_http_request_carries_the_usage_on_its_span(
    traced: tuple[Runtime, Any], exporter: InMemorySpanExporter
) -> None:
    _runtime, client = traced
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    usage = json.loads(lines[-1].removeprefix("data: "))["usage"]

    chat = one(exporter, "chat m")
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0


# -- Tasks ------------------------------------------------------------------------------


async def _read_celery_message(queue: str) -> tuple[str, dict[str, str] | None]:
    """The task id and trace context of the one message on a Celery queue (Redis broker)."""
    import redis.asyncio as redis

    client = redis.from_url(REDIS_URL)
    try:
        raw = await poll(lambda: client.lpop(queue), what=f"a message on {queue}")
    finally:
        await client.aclose()
    message = json.loads(raw)
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args[0], kwargs["trace_context"]


@pytest.fixture
async def celery_queue() -> AsyncIterator[str]:
    """A Celery queue name of the test's own on the Redis broker, deleted afterwards."""
    import redis.asyncio as redis

    queue = unique()
    yield queue
    client = redis.from_url(REDIS_URL)
    try:
        await client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    finally:
        await client.aclose()


async def _submit_through_celery(
    tmp_path: Path, queue: str, headers: dict[str, str]
) -> tuple[str, list[ReadableSpan]]:
    """POST /api/tasks on a gateway whose tasks go to Celery, then run the task the way a
    Celery worker process does, with the trace context the message carried. Returns the
    task id and the spans of both processes (each has its own exporter, as in production:
    closing a runtime shuts its exporter down)."""
    settings = make_settings(
        tmp_path,
        task_queue="celery",
        celery_broker_url=REDIS_URL,
        tasks={"queue": queue, "sweep_interval_s": 3600},
    )
    api_spans = InMemorySpanExporter()
    async with serve(Runtime(settings, span_exporter=api_spans)) as client:
        response = await client.post("/api/tasks", json={"message": "work"}, headers=headers)
        assert response.status_code == 202
        task_id: str = response.json()["task_id"]

    sent_id, trace_context = await _read_celery_message(queue)
    assert sent_id == task_id
    assert trace_context is not None and "traceparent" in trace_context

    worker_spans = InMemorySpanExporter()
    worker = Runtime(settings, role="worker", span_exporter=worker_spans)
    await worker.start()
    try:
        outcome = await worker.execute_task(task_id, trace_context)
    finally:
        await worker.aclose()
    assert outcome.kind == "done"
    return task_id, finished(api_spans) + finished(worker_spans)


async def test_a_task_runs_in_the_trace_that_submitted_it(
    tmp_path: Path, celery_queue: str
) -> None:
    task_id, spans = await _submit_through_celery(tmp_path, celery_queue, {})

    enqueue = one(spans, "guarita.task.enqueue")
    run = one(spans, "guarita.task.run")
    chat = one(spans, "chat m")
    assert run.kind is SpanKind.CONSUMER
    assert dict(run.attributes or {})["guarita.task.id"] == task_id
    assert trace_id(run) == trace_id(enqueue)
    assert parent_id(run) == span_id(enqueue)
    assert run.parent is not None and run.parent.is_remote  # it came through the message
    assert trace_id(chat) == trace_id(run) and is_descendant(chat, run, spans)


async def test_a_task_continues_the_submitting_requests_trace(
    tmp_path: Path, celery_queue: str
) -> None:
    header, caller_trace, _caller_span = traceparent()
    _task_id, spans = await _submit_through_celery(tmp_path, celery_queue, {"traceparent": header})

    server = one(spans, "POST /api/tasks")
    enqueue = one(spans, "guarita.task.enqueue")
    run = one(spans, "guarita.task.run")
    assert trace_id(server) == caller_trace
    assert parent_id(enqueue) == span_id(server)
    assert trace_id(run) == caller_trace


async def test_a_task_on_the_local_queue_runs_in_the_trace_that_submitted_it(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    runtime = Runtime(make_settings(tmp_path), span_exporter=exporter)
    async with serve(runtime) as client:
        response = await client.post("/api/tasks", json={"message": "work"})
        assert response.status_code == 202
        task_id = response.json()["task_id"]

        async def succeeded() -> bool:
            task = await runtime.task_store.get(task_id)
            return task is not None and task.status == "succeeded"

        await poll(succeeded, what=f"task {task_id} to succeed")
    # closed: the local workers have returned, so every span of the task has ended

    enqueue = one(exporter, "guarita.task.enqueue")
    run = one(exporter, "guarita.task.run")
    assert dict(run.attributes or {})["guarita.task.id"] == task_id
    assert trace_id(run) == trace_id(enqueue)
    assert parent_id(run) == span_id(enqueue)
    assert is_descendant(one(exporter, "chat m"), run, exporter)


# -- Off --------------------------------------------------------------------------------


def _stages(pipeline: Any) -> tuple[list[Any], Any]:
    """The stages a composed pipeline runs, outermost first, and its terminal step."""
    stages = []
    while isinstance(pipeline, functools.partial):
        stages.append(pipeline.func)
        pipeline = pipeline.keywords["next"]
    return stages, pipeline


async def test_with_tracing_off_nothing_is_wrapped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tracing={"exporter": "none"})
    runtime = Runtime(settings)
    assert runtime.tracing.enabled is False
    assert isinstance(runtime.tracing.tracer, trace.NoOpTracer)
    assert runtime.tracing.inject() == {}  # nothing to carry into tasks

    stages, terminal = _stages(runtime.pipeline)
    names = [type(s).__name__ for s in stages]
    assert names[0] == "Recording" and "Accounting" in names  # the stages themselves
    assert "_Traced" not in names
    assert type(terminal).__name__ == "ProviderCall" and terminal._tracer is None

    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200


async def test_with_an_exporter_every_stage_is_wrapped_in_a_span(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    """The counterpart of the test above: the same pipeline, traced."""
    runtime = Runtime(make_settings(tmp_path), span_exporter=exporter)
    try:
        assert runtime.tracing.enabled is True
        stages, terminal = _stages(runtime.pipeline)
        assert len(stages) >= 2
        assert {type(s).__name__ for s in stages} == {"_Traced"}
        assert type(terminal).__name__ == "ProviderCall" and terminal._tracer is not None
    finally:
        await runtime.aclose()
