"""The Batch API end to end, with the official OpenAI SDK as the client: files uploaded,
batches run on the task workers through the pipeline, polled to their end, their output
and error files read back. A batch of 200 lines survives a SIGKILLed worker (embedded:
the server process; scale-out: the Celery worker) with every line answered once.

Models are the deterministic ``scripted`` provider and the fake OpenAI upstream (which
counts the calls it answers at once), never the slow local model.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from tests.helpers import UPSTREAM_KEY, FakeUpstream, GuaritaServer, query, scale_out, wait_until

BATCH_TIMEOUT_S = 120


def config(upstream_url: str) -> dict[str, Any]:
    return {
        "models": {
            "fast": {"provider": "scripted"},
            "slow": {"provider": "scripted", "options": {"delay_s": 1.0}},
            "steady": {"provider": "scripted", "options": {"delay_s": 0.2}},
            "limited": {  # its upstream refuses the first three calls with a 429
                "provider": "scripted",
                "options": {"fail_first": 3, "error": "rate_limit", "reply": "at last"},
                "retry": {"max_attempts": 1},
            },
            "pricey": {
                "provider": "scripted",
                "price_input_per_1m": 1_000_000.0,
                "price_output_per_1m": 1_000_000.0,
            },
            "up": {
                "provider": "openai",
                "base_url": upstream_url + "/v1",
                "api_key_env": "TEST_UPSTREAM_KEY",
                "upstream": "gpt-fake",
            },
        },
        "agents": {"helper": {"model": "fast", "system_prompt": "Be brief."}},
        "default_agent": "helper",
        "tasks": {"workers": 2, "lease_s": 2, "sweep_interval_s": 0.5, "retry_backoff_s": 0.1},
        "batches": {"poll_interval_s": 0.2, "completion_windows": {"24h": 86400, "4s": 4}},
    }


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = FakeUpstream("openai_upstream", tmp_path_factory.mktemp("batch-upstream")).start()
    yield fake
    fake.stop()


def _server(workdir: Path, upstream: FakeUpstream) -> GuaritaServer:
    return GuaritaServer(
        workdir, config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    )


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuaritaServer]:
    server = _server(tmp_path_factory.mktemp("batches"), upstream)
    server.keys = {  # type: ignore[attr-defined]
        "main": server.create_key("batches"),
        "other": server.create_key("other"),
        "narrow": server.cli(
            "keys", "create", "--name", "narrow", "--tier", "enterprise", "--models", "fast"
        ).stdout.strip(),
        "admin": server.create_key("ops", "admin"),
        "frugal": server.cli(
            "keys",
            "create",
            "--name",
            "frugal",
            "--tier",
            "enterprise",
            "--daily-budget-usd",
            "0.01",
        ).stdout.strip(),
    }
    server.start()
    yield server
    server.stop()


def client(server: GuaritaServer, who: str = "main") -> OpenAI:
    key = server.keys[who]  # type: ignore[attr-defined]
    return OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=30)


def chat_line(custom_id: str, text: str, model: str = "fast", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def upload(api: OpenAI, lines: list[Any], name: str = "input.jsonl") -> Any:
    return api.files.create(file=(name, jsonl(lines)), purpose="batch")


def wait_for_end(api: OpenAI, batch_id: str, ended: tuple[str, ...] = ("completed",)) -> Any:
    final = ("completed", "failed", "expired", "cancelled")

    def over() -> Any:
        batch = api.batches.retrieve(batch_id)
        return batch if batch.status in final else None

    batch = wait_until(over, timeout=BATCH_TIMEOUT_S, interval=0.2, what=f"batch {batch_id}")
    assert batch.status in ended, batch
    return batch


def run_to_end(api: OpenAI, lines: list[Any]) -> Any:
    """A chat batch of ``lines`` created and polled until it completed."""
    created = api.batches.create(
        input_file_id=upload(api, lines).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    return wait_for_end(api, created.id)


def read_lines(api: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in api.files.content(file_id).text.splitlines()]


def test_sdk_round_trip(gateway: GuaritaServer) -> None:
    api = client(gateway)
    lines = [chat_line(f"q-{i}", f"question {i}") for i in range(5)]
    lines.insert(2, chat_line("missing", "hi", model="nope"))
    lines.append(chat_line("agent", "hello", model="helper"))
    stored = upload(api, lines)
    assert (stored.object, stored.purpose, stored.status) == ("file", "batch", "processed")
    assert stored.id.startswith("file-") and stored.bytes == len(jsonl(lines))
    assert api.files.retrieve(stored.id).filename == "input.jsonl"
    assert api.files.content(stored.id).content == jsonl(lines)

    created = api.batches.create(
        input_file_id=stored.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert created.id.startswith("batch_") and created.status == "validating"
    assert created.request_counts is not None and created.request_counts.total == 7
    assert created.expires_at == created.created_at + 86400

    batch = wait_for_end(api, created.id)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (6, 1)
    assert batch.metadata == {"job": "nightly"}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = read_lines(api, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ["q-0", "q-1", "q-2", "q-3", "q-4", "agent"]
    for item in output:
        assert item["id"].startswith("batch_req_") and item["error"] is None
        assert item["response"]["status_code"] == 200
        assert item["response"]["request_id"].startswith(created.id)
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 0"
    assert output[0]["response"]["body"]["object"] == "chat.completion"
    [error] = read_lines(api, batch.error_file_id)
    assert error["custom_id"] == "missing"
    assert error["error"]["code"] == "model_not_found"
    assert error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["type"] == "not_found_error"

    listed = [b.id for b in api.batches.list(limit=100)]
    assert created.id in listed
    assert stored.id in [f.id for f in api.files.list(purpose="batch")]
    assert batch.output_file_id in [f.id for f in api.files.list(purpose="batch_output")]


def test_lines_are_records_of_the_key(gateway: GuaritaServer) -> None:
    api = client(gateway)
    created = api.batches.create(
        input_file_id=upload(api, [chat_line("r-1", "recorded")]).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for_end(api, created.id)

    def recorded() -> list[dict[str, Any]]:
        return asyncio.run(
            query(
                gateway.store_url,
                "SELECT key_id, endpoint, status FROM requests WHERE request_id = :rid",
                rid=f"{created.id}-1",
            )
        )

    [row] = wait_until(recorded, timeout=30, what="the line's request record")
    assert row["endpoint"] == "batch" and row["status"] == "success"
    assert row["key_id"] is not None


def test_pagination_with_after_and_limit(gateway: GuaritaServer) -> None:
    api = client(gateway, "admin")  # a key of its own: only these batches are listed
    file_id = upload(api, [chat_line("p", "page")]).id
    ids = [
        api.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = api.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = api.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in second.data] == ids[:1] and not second.has_more
    assert [b.id for b in api.batches.list(limit=2)] == ids[::-1]  # the SDK follows the pages


def test_embeddings_batch(gateway: GuaritaServer) -> None:
    api = client(gateway)
    lines = [
        {
            "custom_id": f"e-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "fast", "input": f"text {i}"},
        }
        for i in range(3)
    ]
    created = api.batches.create(
        input_file_id=upload(api, lines).id, endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = wait_for_end(api, created.id)
    output = read_lines(api, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ["e-0", "e-1", "e-2"]
    assert all(len(o["response"]["body"]["data"][0]["embedding"]) == 16 for o in output)
    assert batch.error_file_id is None


def test_bad_lines_go_to_the_error_file(gateway: GuaritaServer) -> None:
    api = client(gateway, "narrow")  # may use the model "fast" only
    lines = [
        chat_line("ok", "fine"),
        chat_line("forbidden", "hi", model="up"),
        {**chat_line("empty", "x"), "body": {"model": "fast", "messages": []}},
        chat_line("streamed", "hi", stream=True),
        chat_line("hot", "hi", temperature=7),
    ]
    batch = run_to_end(api, lines)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 4)
    assert [o["custom_id"] for o in read_lines(api, batch.output_file_id)] == ["ok"]
    errors = {e["custom_id"]: e for e in read_lines(api, batch.error_file_id)}
    assert list(errors) == ["forbidden", "empty", "streamed", "hot"]  # input order
    assert errors["forbidden"]["error"]["code"] == "model_not_allowed"
    assert errors["forbidden"]["response"]["status_code"] == 403
    for name, param in (("empty", "messages"), ("streamed", "stream"), ("hot", "temperature")):
        assert errors[name]["response"]["status_code"] == 400
        assert errors[name]["response"]["body"]["error"]["param"] == param, errors[name]


def test_rate_limited_lines_wait_and_succeed(gateway: GuaritaServer) -> None:
    """The upstream refuses three calls with a 429: those lines wait its Retry-After and
    try again, and every line is answered."""
    api = client(gateway)
    lines = [chat_line(f"r{i}", "x", model="limited") for i in range(5)]
    batch = run_to_end(api, lines)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 0)
    output = read_lines(api, batch.output_file_id)
    assert {o["response"]["body"]["choices"][0]["message"]["content"] for o in output} == {
        "at last"
    }


def test_a_used_up_budget_fails_its_lines_at_once(gateway: GuaritaServer) -> None:
    """A budget refusal (429 insufficient_quota) is not waited out: waiting cannot help
    before the budget's period ends, so each line fails with it and the batch ends."""
    api = client(gateway, "frugal")  # $0.01 a day, and each call may cost dollars
    lines = [chat_line(f"b{i}", "x", model="pricey") for i in range(3)]
    batch = run_to_end(api, lines)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
    errors = read_lines(api, batch.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"insufficient_quota"}
    assert {e["response"]["status_code"] for e in errors} == {429}


MALFORMED = [
    (
        b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n{nope\n',
        "line 2: not valid JSON",
    ),
    (b"[1, 2]\n", "line 1: must be a JSON object"),
    (
        b'{"method": "POST", "url": "/v1/chat/completions", "body": {}}\n',
        "line 1: custom_id missing",
    ),
    (
        jsonl([chat_line("same", "a"), chat_line("other", "b"), chat_line("same", "c")]),
        "line 3: custom_id 'same' is already used on line 1",
    ),
    (jsonl([{**chat_line("g", "a"), "method": "GET"}]), "line 1: method must be 'POST'"),
    (
        jsonl([chat_line("a", "a"), {**chat_line("b", "b"), "url": "/v1/completions"}]),
        "line 2: url must be",
    ),
    (
        jsonl([chat_line("a", "a"), {**chat_line("b", "b"), "url": "/v1/embeddings"}]),
        "line 2: url '/v1/embeddings' differs",
    ),
    (jsonl([{**chat_line("b", "b"), "body": "text"}]), "line 1: body must be a JSON object"),
    (b"\n\n", "the file has no requests"),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED)
def test_a_malformed_file_is_a_400_naming_the_line(
    gateway: GuaritaServer, content: bytes, message: str
) -> None:
    api = client(gateway)
    with pytest.raises(openai.BadRequestError) as refused:
        api.files.create(file=("bad.jsonl", content), purpose="batch")
    assert message in refused.value.message
    body: Any = refused.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == "file"


def test_a_file_for_another_endpoint_is_a_400_at_creation(gateway: GuaritaServer) -> None:
    api = client(gateway)
    lines = [
        {
            "custom_id": "e",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "fast", "input": "x"},
        }
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        api.batches.create(
            input_file_id=upload(api, lines).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    assert "line 1: url '/v1/embeddings' differs from the batch's endpoint" in (
        refused.value.message
    )
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        api.batches.create(
            input_file_id=upload(api, lines).id, endpoint="/v1/embeddings", completion_window="7d"
        )  # type: ignore[arg-type]


def test_uploads_outside_the_format_are_400s(gateway: GuaritaServer) -> None:
    url, key = gateway.base_url + "/v1/files", gateway.keys["main"]  # type: ignore[attr-defined]
    auth = {"authorization": f"Bearer {key}"}
    files = {"file": ("x.jsonl", jsonl([chat_line("a", "b")]))}
    wrong_purpose = httpx.post(url, headers=auth, files=files, data={"purpose": "fine-tune"})
    no_file = httpx.post(url, headers=auth, data={"purpose": "batch"})
    not_multipart = httpx.post(url, headers=auth, json={"purpose": "batch"})
    for answer in (wrong_purpose, no_file, not_multipart):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"


def test_another_key_gets_404(gateway: GuaritaServer) -> None:
    mine, theirs = client(gateway), client(gateway, "other")
    stored = upload(mine, [chat_line("a", "secret question")])
    batch = mine.batches.create(
        input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for attempt in (
        lambda: theirs.files.retrieve(stored.id),
        lambda: theirs.files.content(stored.id),
        lambda: theirs.files.delete(stored.id),
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.batches.create(
            input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert stored.id not in [f.id for f in theirs.files.list()]
    assert batch.id not in [b.id for b in theirs.batches.list()]
    done = wait_for_end(mine, batch.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.content(done.output_file_id)
    # an admin key may look at (not read the files of) any batch
    assert client(gateway, "admin").batches.retrieve(batch.id).status == "completed"
    with pytest.raises(openai.NotFoundError):
        client(gateway, "admin").files.content(done.output_file_id)
    assert mine.files.delete(stored.id).deleted
    with pytest.raises(openai.NotFoundError):
        mine.files.retrieve(stored.id)


def test_at_most_ten_lines_in_flight(gateway: GuaritaServer, upstream: FakeUpstream) -> None:
    httpx.post(upstream.base_url + "/_control", json={"delay_ms": 500, "reset": True})
    try:
        api = client(gateway)
        lines = [chat_line(f"c-{i}", f"q {i}", model="up") for i in range(30)]
        created = api.batches.create(
            input_file_id=upload(api, lines).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        batch = wait_for_end(api, created.id)
        stats = httpx.get(upstream.base_url + "/_stats").json()
    finally:
        httpx.post(upstream.base_url + "/_control", json={"delay_ms": 0})
    assert batch.request_counts is not None and batch.request_counts.completed == 30
    assert stats["answered"] == 30
    assert stats["max_in_flight"] == 10  # the bound, and reached: lines do run side by side


def test_cancel_finishes_what_is_in_flight_and_runs_nothing_more(gateway: GuaritaServer) -> None:
    api = client(gateway)
    lines = [chat_line(f"s-{i}", f"q {i}", model="slow") for i in range(60)]
    created = api.batches.create(
        input_file_id=upload(api, lines).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_until(
        lambda: api.batches.retrieve(created.id).status == "in_progress",
        timeout=60,
        interval=0.1,
        what="the batch to start",
    )
    cancelling = api.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait_for_end(api, created.id, ended=("cancelled",))
    assert batch.cancelled_at is not None and batch.completed_at is None
    counts = batch.request_counts
    assert counts is not None and 0 < counts.completed < 60 and counts.failed == 0
    output = read_lines(api, batch.output_file_id)
    assert len(output) == counts.completed
    assert [o["custom_id"] for o in output] == [f"s-{i}" for i in range(counts.completed)]
    later = api.batches.retrieve(created.id)
    assert later.request_counts == counts  # nothing ran after the cancel
    with pytest.raises(openai.ConflictError, match="is completed"):
        api.batches.cancel(
            wait_for_end(
                api,
                api.batches.create(
                    input_file_id=upload(api, [chat_line("x", "y")]).id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                ).id,
            ).id
        )


def test_past_its_window_a_batch_expires_with_what_completed(gateway: GuaritaServer) -> None:
    api = client(gateway)
    lines = [chat_line(f"w-{i}", f"q {i}", model="slow") for i in range(100)]
    created = api.batches.create(
        input_file_id=upload(api, lines).id, endpoint="/v1/chat/completions", completion_window="4s"
    )  # type: ignore[arg-type]
    batch = wait_for_end(api, created.id, ended=("expired",))
    counts = batch.request_counts
    assert counts is not None and 0 < counts.completed < 100
    assert counts.completed + counts.failed == 100
    assert batch.expired_at is not None
    output = read_lines(api, batch.output_file_id)
    errors = read_lines(api, batch.error_file_id)
    assert len(output) == counts.completed and len(errors) == counts.failed
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert sorted(o["custom_id"] for o in output + errors) == sorted(f"w-{i}" for i in range(100))


@pytest.mark.slow
def test_200_lines_survive_a_killed_worker(upstream: FakeUpstream, tmp_path: Path) -> None:
    server = _server(tmp_path / "kill", upstream)
    key = server.create_key("kill")
    server.start()
    try:
        api = OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=30)
        lines = [chat_line(f"k-{i:03}", f"line {i}", model="steady") for i in range(200)]
        created = api.batches.create(
            input_file_id=upload(api, lines).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )

        def some_done() -> bool:
            counts = api.batches.retrieve(created.id).request_counts
            return counts is not None and counts.completed >= 30

        wait_until(some_done, timeout=BATCH_TIMEOUT_S, interval=0.1, what="30 lines done")
        if scale_out():  # the Celery worker dies mid-batch; another takes the task over
            assert server.worker is not None
            server.worker.stop(signal.SIGKILL)
            server.worker = server.start_worker()
        else:  # the server itself dies mid-batch and starts again on the same database
            server.stop(signal.SIGKILL)
            rows = asyncio.run(query(server.store_url, "SELECT status, completed FROM batches"))
            assert rows[0]["status"] == "in_progress" and 30 <= rows[0]["completed"] < 200
            server.start()
        batch = wait_for_end(api, created.id)
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (200, 0)
        output = read_lines(api, batch.output_file_id)
        assert [o["custom_id"] for o in output] == [f"k-{i:03}" for i in range(200)]
        assert all(
            o["response"]["body"]["choices"][0]["message"]["content"]
            == f"echo: line {int(o['custom_id'][2:])}"
            for o in output
        )
        assert batch.error_file_id is None
        [task] = asyncio.run(
            query(server.store_url, "SELECT deliveries, status FROM tasks WHERE kind = 'batch'")
        )
        assert task["deliveries"] >= 2, "the kill interrupted nothing"
        assert task["status"] == "succeeded"
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/files"])
def test_a_page_cursor_that_is_no_id_is_a_400(gateway: GuaritaServer, path: str) -> None:
    """Found by schemathesis: a NUL in ``after`` reached PostgreSQL and was a 500."""
    response = httpx.get(gateway.base_url + path, params={"after": "batch_1\x00x"},
                         headers={"Authorization": f"Bearer {gateway.keys['main']}"})  # type: ignore[attr-defined]  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "query.after"
