"""The OpenAI-compatible API end to end: a real ``guarita serve`` process, the official
``openai`` SDK as client, the real local model, and a local server speaking OpenAI's wire
format standing in for hosted upstreams (which cannot be reached from here).

Runs once against the embedded SQLite store and once against PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import (
    UPSTREAM_KEY,
    FakeUpstream,
    GuaritaServer,
    create_pg_database,
    drop_pg_database,
    free_port,
    query,
    scale_out,
    wait_until,
)


def gateway_config(upstream_url: str) -> dict[str, Any]:
    def up(upstream: str, **extra: Any) -> dict[str, Any]:
        return {
            "provider": "openai",
            "base_url": upstream_url + "/v1",
            "api_key_env": "TEST_UPSTREAM_KEY",
            "upstream": upstream,
            "price_input_per_1m": 3.0,
            "price_output_per_1m": 15.0,
            **extra,
        }

    return {
        "models": {
            "local": {
                "provider": "llamacpp",
                "context_window": 2048,
                "options": {"instances": 1},
                "quality": {"reject_empty": False},
            },
            "echo": {"provider": "scripted"},
            "up": up("gpt-fake"),
            "up-401": up("fail-401"),
            "up-429": up("fail-429"),
            "up-500": up("fail-500"),
            "up-slow": up("slow", timeout_s=0.5),
            "up-garbage": up("garbage"),
            "up-break": up("stream-break"),
            "up-cut": up("stream-cut"),
            "up-cached": up("gpt-fake", cache={"mode": "exact"}),
            "up-cut-cached": up("stream-cut", cache={"mode": "exact"}),
            "up-down": {**up("gpt-fake"), "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        },
        "agents": {
            "helper": {
                "model": "up",
                "system_prompt": "You are terse.",
                "max_tokens": 50,
                "temperature": 0.2,
            },
            "localagent": {"model": "local", "max_tokens": 8},
        },
        "default_agent": "helper",
    }


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(
        "openai_upstream",
        tmp_path_factory.mktemp("upstream"),
        env={"FAKE_REQUIRE_KEY": UPSTREAM_KEY},
    ).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuaritaServer]:
    if request.param == "sqlite" and scale_out():
        pytest.skip("scale-out mode runs on PostgreSQL")
    workdir: Path = tmp_path_factory.mktemp(f"gw-{request.param}")
    pg_name = None
    if request.param == "postgres":
        pg_name, url = create_pg_database()
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'store.db'}"
    server = GuaritaServer(
        workdir,
        gateway_config(upstream.base_url),
        store_url=url,
        env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    server.store_url = url  # type: ignore[attr-defined]
    server.key = server.create_key("api-tests", "pro")  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()
    if pg_name:
        drop_pg_database(pg_name)


def sdk(gateway: GuaritaServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0)  # type: ignore[attr-defined]


def headers(gateway: GuaritaServer, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {gateway.key}", **extra}  # type: ignore[attr-defined]


async def records(gateway: GuaritaServer, request_id: str) -> list[dict[str, Any]]:
    return await query(
        gateway.store_url, "SELECT * FROM requests WHERE request_id = :rid", rid=request_id
    )  # type: ignore[attr-defined]


async def wait_for_record(gateway: GuaritaServer, request_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []
    deadline_rows = None
    for _ in range(200):
        found = await records(gateway, request_id)
        if found:
            deadline_rows = found
            break
        import asyncio

        await asyncio.sleep(0.05)
    assert deadline_rows, f"no request record for {request_id}"
    return deadline_rows[0]


@pytest.mark.model
def test_local_model_through_the_sdk(gateway: GuaritaServer) -> None:
    completion = sdk(gateway).chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6,
        temperature=0,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens <= 6


@pytest.mark.model
def test_local_model_streams_with_usage(gateway: GuaritaServer) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="localagent",
        messages=[{"role": "user", "content": "Count: one, two,"}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens > 0
    assert (
        0 < chunks[-1].usage.completion_tokens <= 8 or chunks[-2].choices[0].finish_reason == "stop"
    )
    assert all(c.usage is None for c in chunks[:-1])


async def test_hosted_model_passthrough_is_costed_and_recorded(
    gateway: GuaritaServer, upstream: FakeUpstream
) -> None:
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model="up",
        messages=[{"role": "user", "content": "hello there friend"}],
        user="u-42",
        extra_body={"metadata": {"trace": "abc"}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "upstream says: hello there friend"
    sent = upstream.last_request()
    assert sent["body"]["model"] == "gpt-fake"
    assert sent["body"]["user"] == "u-42"
    assert sent["body"]["metadata"] == {"trace": "abc"}
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    request_id = raw.headers["x-request-id"]
    record = await wait_for_record(gateway, request_id)
    usage = completion.usage
    assert usage is not None
    assert record["input_tokens"] == usage.prompt_tokens
    assert record["output_tokens"] == usage.completion_tokens
    assert record["cost_usd"] == pytest.approx(
        (usage.prompt_tokens * 3 + usage.completion_tokens * 15) / 1e6
    )
    assert record["status"] == "success" and record["status_code"] == 200
    assert record["provider"] == "openai" and record["model"] == "up"
    assert record["key_id"].startswith("key_")


async def test_stream_through_hosted_model(gateway: GuaritaServer) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="up",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "upstream says: a b c"


def test_stream_without_usage_option_has_no_usage_chunk(gateway: GuaritaServer) -> None:
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/chat/completions",
        headers=headers(gateway),
        json={"model": "up", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert all('"usage":{' not in line for line in lines)


def test_broken_stream_ends_with_an_error_event_not_done(gateway: GuaritaServer) -> None:
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/chat/completions",
        headers=headers(gateway),
        json={
            "model": "up-break",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four"}],
        },
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in lines[-1]
    assert '"error"' in lines[-1]


async def test_a_stream_cut_off_cleanly_is_a_truncation_not_done(gateway: GuaritaServer) -> None:
    """The upstream closes the stream cleanly after two chunks, without a finish reason or
    ``[DONE]``: the caller gets an error event (no ``[DONE]``), the record an error and the
    deployment a quality failure."""
    rid = "cut-" + gateway.base_url.rsplit(":", 1)[1]
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/chat/completions",
        headers=headers(gateway, **{"x-request-id": rid}),
        json={
            "model": "up-cut",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four"}],
        },
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert all("[DONE]" not in line for line in lines)
    assert '"code":"upstream_truncated"' in lines[-1]
    record = await wait_for_record(gateway, rid)
    assert record["status"] == "error" and record["error_type"] == "upstream_error"
    text = httpx.get(gateway.base_url + "/metrics").text
    assert 'guarita_quality_failures_total{deployment="up-cut",reason="truncated"}' in text


def test_a_repeated_request_is_a_cache_hit_the_sdk_reads(gateway: GuaritaServer) -> None:
    """A model with the exact cache: the second call is a hit, complete or streamed (a
    valid SSE stream with usage and ``[DONE]`` for the SDK); ``Cache-Control: no-cache``
    skips the lookup."""
    client = sdk(gateway)
    question = [{"role": "user", "content": f"cache me {gateway.base_url}"}]
    first = client.chat.completions.with_raw_response.create(model="up-cached", messages=question)
    again = client.chat.completions.with_raw_response.create(model="up-cached", messages=question)
    assert first.headers["x-guarita-cache"] == "miss" and again.headers["x-guarita-cache"] == "hit"
    answer, hit = first.parse(), again.parse()
    assert hit.choices[0].message.content == answer.choices[0].message.content
    assert hit.id != answer.id and hit.usage is not None and hit.usage.total_tokens > 0
    with client.chat.completions.with_streaming_response.create(
        model="up-cached", messages=question, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-guarita-cache"] == "hit"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == hit.usage.total_tokens
    fresh = client.chat.completions.with_raw_response.create(
        model="up-cached", messages=question, extra_headers={"Cache-Control": "no-cache"}
    )
    assert fresh.headers["x-guarita-cache"] == "bypass"


def test_a_cut_off_stream_is_never_cached(gateway: GuaritaServer) -> None:
    body = {"model": "up-cut-cached", "stream": True,
            "messages": [{"role": "user", "content": f"cut {gateway.base_url}"}]}  # fmt: skip
    for _ in range(2):
        with httpx.stream("POST", gateway.base_url + "/v1/chat/completions",
                          headers=headers(gateway), json=body) as r:  # fmt: skip
            assert r.headers["x-guarita-cache"] == "miss"
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert '"code":"upstream_truncated"' in lines[-1]


def test_agent_as_model_adds_its_system_prompt(
    gateway: GuaritaServer, upstream: FakeUpstream
) -> None:
    sdk(gateway).chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "hi"}]
    )
    body = upstream.last_request()["body"]
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2


def test_models_lists_models_and_agents(gateway: GuaritaServer) -> None:
    ids = {m.id for m in sdk(gateway).models.list()}
    assert {"local", "echo", "up", "helper", "localagent"} <= ids


def test_embeddings(gateway: GuaritaServer) -> None:
    result = sdk(gateway).embeddings.create(model="up", input=["one", "two words"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[1].embedding[0] == 9.0
    scripted = sdk(gateway).embeddings.create(model="echo", input="hello")
    assert len(scripted.data[0].embedding) == 16


@pytest.mark.parametrize(
    ("model", "status", "error_class"),
    [
        ("up-401", 502, openai.APIStatusError),
        ("up-429", 429, openai.RateLimitError),
        ("up-500", 502, openai.APIStatusError),
        ("up-slow", 504, openai.APIStatusError),
        ("up-garbage", 502, openai.APIStatusError),
        ("up-down", 502, openai.APIStatusError),
    ],
)
def test_upstream_failures_are_mapped(
    gateway: GuaritaServer, model: str, status: int, error_class: type[openai.APIStatusError]
) -> None:
    """Finding 5: the caller learns the model and a stable code, never the upstream's URL,
    an exception class or the key's variable; those go to the log with the request id."""
    with pytest.raises(error_class) as caught:
        sdk(gateway).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == status
    message = caught.value.body["message"]  # type: ignore[index]
    assert f"model {model!r}" in message
    assert caught.value.body["code"]  # type: ignore[index]
    for internal in ("127.0.0.1", "http", "TEST_UPSTREAM_KEY", UPSTREAM_KEY, "Error", "answered"):
        assert internal not in message, message
    if model == "up-429":
        assert caught.value.response.headers["retry-after"] == "7"
    rid = caught.value.response.headers["x-request-id"]
    line = wait_until(lambda: _log_line(gateway, rid), timeout=10, what="the request's log line")
    assert "error_detail" in line and "127.0.0.1" in line
    if model == "up-401":
        assert "TEST_UPSTREAM_KEY" in line and UPSTREAM_KEY not in line


def _log_line(gateway: GuaritaServer, rid: str) -> str | None:
    for line in gateway.logs().splitlines():
        if rid in line and '"event":"request"' in line:
            return line
    return None


def test_embeddings_that_are_not_embeddings_are_a_502(gateway: GuaritaServer) -> None:
    """Finding 6: an upstream answering something else gave 200 with ``data: []``."""
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gateway).embeddings.create(model="up-garbage", input=["a", "b"])
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_invalid_response"  # type: ignore[index]


async def test_long_request_ids_are_accepted_and_recorded(gateway: GuaritaServer) -> None:
    """Finding 1: ids of 65-128 characters broke the store's batch insert on PostgreSQL
    and made ``POST /api/tasks`` answer 500."""
    rid = "long-" + "x" * 123
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        headers=headers(gateway, **{"x-request-id": rid}),
        json={"model": "echo", "messages": [{"role": "user", "content": "long"}]},
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == rid
    task_rid = "task-" + "y" * 123
    task = httpx.post(
        gateway.base_url + "/api/tasks",
        headers=headers(gateway, **{"x-request-id": task_rid}),
        json={"message": "hi"},
    )
    assert task.status_code == 202, task.text
    record = await wait_for_record(gateway, rid)
    assert record["request_id"] == rid
    after = "after-" + gateway.base_url.rsplit(":", 1)[1]
    httpx.post(
        gateway.base_url + "/v1/chat/completions",
        headers=headers(gateway, **{"x-request-id": after}),
        json={"model": "echo", "messages": [{"role": "user", "content": "next"}]},
    )
    assert (await wait_for_record(gateway, after))["request_id"] == after


async def test_request_id_is_echoed_recorded_and_logged(gateway: GuaritaServer) -> None:
    rid = "test-rid-" + gateway.base_url.rsplit(":", 1)[1]
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        headers=headers(gateway, **{"x-request-id": rid}),
        json={"model": "echo", "messages": [{"role": "user", "content": "ping pong"}]},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == rid
    record = await wait_for_record(gateway, rid)
    assert record["output_tokens"] == 3  # "echo: ping pong"

    def logged() -> str | None:
        for line in gateway.logs().splitlines():
            if rid in line and '"event":"request"' in line:
                return line
        return None

    line = wait_until(logged, timeout=10, what="the request's log line")
    import json

    entry = json.loads(line)
    assert entry["status"] == 200 and entry["model"] == "echo" and entry["tokens"] == 5
    assert entry["key_id"].startswith("key_") and entry["duration_ms"] > 0 and "cost_usd" in entry
    assert gateway.key not in gateway.logs()  # type: ignore[attr-defined]


def test_generated_request_id(gateway: GuaritaServer) -> None:
    response = httpx.get(gateway.base_url + "/health")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.headers["x-content-type-options"] == "nosniff"


def test_metrics_exposes_the_documented_series(gateway: GuaritaServer) -> None:
    sdk(gateway).chat.completions.create(
        model="up", messages=[{"role": "user", "content": "metrics"}]
    )
    sdk(gateway).chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "metrics"}]
    )
    text = httpx.get(gateway.base_url + "/metrics").text
    assert 'agent_requests_total{agent_name="direct",status="success"}' in text
    assert 'agent_requests_total{agent_name="helper",status="success"}' in text
    assert 'agent_request_duration_seconds_bucket{agent_name="helper"' in text
    assert 'agent_tokens_used_total{agent_name="direct",model="up"}' in text
    assert 'agent_cost_usd_total{agent_name="helper"}' in text
    assert "agent_active_requests " in text
    assert (
        'guarita_http_request_duration_seconds_count{method="POST",route="/v1/chat/completions",status="200"}'
        in text
    )


def test_health_and_ready(gateway: GuaritaServer) -> None:
    assert httpx.get(gateway.base_url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.base_url + "/ready")
    assert ready.status_code == 200
    expected = {"store": True, "model:up": True, "records": True}
    if scale_out():
        expected["redis"] = True
    assert ready.json()["checks"] == expected
    assert ready.json()["records_pending"] >= 0
