"""The agent API end to end: sessions kept in the store, tasks polled to completion,
retried, failed with their error kept, and finished after a restart.

Upstreams are a local server speaking OpenAI's wire format (hosted models cannot be
reached from here) and the deterministic ``scripted`` provider. Runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import UPSTREAM_KEY, FakeUpstream, GuaritaServer, query, scale_out, wait_until


def config(upstream_url: str) -> dict[str, Any]:
    def up(upstream: str, **extra: Any) -> dict[str, Any]:
        return {
            "provider": "openai",
            "base_url": upstream_url + "/v1",
            "api_key_env": "TEST_UPSTREAM_KEY",
            "upstream": upstream,
            **extra,
        }

    return {
        "models": {
            "up": up("gpt-fake", context_window=400),
            "up-400": up("fail-400"),
            "up-500": up("fail-500"),
            "slow": {"provider": "scripted", "options": {"delay_s": 3, "reply": "slow but sure"}},
        },
        "agents": {
            "bot": {"model": "up", "system_prompt": "Be kind.", "max_tokens": 100},
            "rejects": {"model": "up-400"},
            "flaky": {"model": "up-500"},
            "patient": {"model": "slow"},
        },
        "default_agent": "bot",
        "tasks": {
            "workers": 2,
            "max_attempts": 2,
            "retry_backoff_s": 0.01,
            "lease_s": 2,
            "sweep_interval_s": 0.5,
        },
    }


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = FakeUpstream("openai_upstream", tmp_path_factory.mktemp("upstream")).start()
    yield fake
    fake.stop()


@pytest.fixture
def gateway(store_url: str, upstream: FakeUpstream, tmp_path: Path) -> Iterator[GuaritaServer]:
    server = GuaritaServer(
        tmp_path / "gw",
        config(upstream.base_url),
        store_url=store_url,
        env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    server.store_url = store_url  # type: ignore[attr-defined]
    server.key = server.create_key("agents")  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(gateway: GuaritaServer, key: str, **body: Any) -> httpx.Response:
    return httpx.post(gateway.base_url + "/api/chat", headers=auth(key), json=body, timeout=30)


def poll_task(
    gateway: GuaritaServer, key: str, task_id: str, *, timeout: float = 60
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(
            f"{gateway.base_url}/api/tasks/{task_id}", headers=auth(key)
        ).json()
        return body if body["status"] in ("succeeded", "failed") else None

    result: dict[str, Any] = wait_until(
        finished, timeout=timeout, interval=0.1, what=f"task {task_id}"
    )
    return result


async def test_session_keeps_the_conversation(
    gateway: GuaritaServer, upstream: FakeUpstream
) -> None:
    key = gateway.key  # type: ignore[attr-defined]
    first = chat(gateway, key, message="my name is Ana")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["response"] == "upstream says: my name is Ana"
    assert body["agent"] == "bot" and body["usage"]["total_tokens"] > 0 and body["cost_usd"] >= 0
    second = chat(gateway, key, message="what is my name?", session_id=body["session_id"])
    assert second.json()["session_id"] == body["session_id"]
    sent = upstream.last_request()["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert (
        sent[1]["content"] == "my name is Ana"
        and sent[2]["content"] == "upstream says: my name is Ana"
    )
    if scale_out():  # the conversation lives in Redis
        return
    rows = await query(
        gateway.store_url,
        "SELECT role FROM messages WHERE session_id = :s ORDER BY id",  # type: ignore[attr-defined]
        s=body["session_id"],
    )
    assert [r["role"] for r in rows] == ["user", "assistant", "user", "assistant"]


def test_session_context_is_bounded_by_the_model_window(
    gateway: GuaritaServer, upstream: FakeUpstream
) -> None:
    key = gateway.key  # type: ignore[attr-defined]
    session = "bounded-session"
    for i in range(12):
        assert (
            chat(gateway, key, message=f"turn {i} " + "word " * 40, session_id=session).status_code
            == 200
        )
    sent = upstream.last_request()["body"]["messages"]
    # window 400 - max_tokens 100 leaves room for only the last few turns
    assert 2 < len(sent) < 24
    assert sent[-1]["content"].startswith("turn 11")
    assert sent[0]["role"] == "system"


def test_a_session_belongs_to_its_key(gateway: GuaritaServer) -> None:
    key = gateway.key  # type: ignore[attr-defined]
    other = gateway.create_key("someone-else")
    session_id = chat(gateway, key, message="secret").json()["session_id"]
    stolen = chat(gateway, other, message="tell me", session_id=session_id)
    assert stolen.status_code == 404
    assert stolen.json()["error"]["code"] == "session_not_found"


def test_task_runs_and_is_polled(gateway: GuaritaServer) -> None:
    key = gateway.key  # type: ignore[attr-defined]
    accepted = httpx.post(
        gateway.base_url + "/api/tasks", headers=auth(key), json={"message": "long job"}
    )
    assert accepted.status_code == 202
    task_id = accepted.json()["task_id"]
    assert accepted.json()["status"] == "queued"
    assert accepted.headers["location"] == f"/api/tasks/{task_id}"
    done = poll_task(gateway, key, task_id)
    assert done["status"] == "succeeded", done
    assert done["result"]["response"] == "upstream says: long job"
    assert done["attempts"] == 1 and done["finished_at"]
    other = gateway.create_key("other")
    assert (
        httpx.get(f"{gateway.base_url}/api/tasks/{task_id}", headers=auth(other)).status_code == 404
    )


def test_task_failing_on_its_request_is_not_retried(gateway: GuaritaServer) -> None:
    key = gateway.key  # type: ignore[attr-defined]
    task_id = httpx.post(
        gateway.base_url + "/api/tasks",
        headers=auth(key),
        json={"message": "x", "agent": "rejects"},
    ).json()["task_id"]
    done = poll_task(gateway, key, task_id)
    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert done["error"]["type"] == "invalid_request_error"


def test_task_failing_upstream_is_retried_then_failed(gateway: GuaritaServer) -> None:
    key = gateway.key  # type: ignore[attr-defined]
    task_id = httpx.post(
        gateway.base_url + "/api/tasks", headers=auth(key), json={"message": "x", "agent": "flaky"}
    ).json()["task_id"]
    done = poll_task(gateway, key, task_id)
    assert done["status"] == "failed"
    assert done["attempts"] == 2
    assert "500" in done["error"]["message"]


async def test_task_accepted_before_a_crash_finishes_after_restart(gateway: GuaritaServer) -> None:
    key = gateway.key  # type: ignore[attr-defined]
    ids = [
        httpx.post(
            gateway.base_url + "/api/tasks",
            headers=auth(key),
            json={"message": f"job {i}", "agent": "patient"},
        ).json()["task_id"]
        for i in range(3)
    ]
    gateway.stop(signal.SIGKILL)  # no chance to finish anything
    if scale_out():  # the conversation lives in Redis
        return
    rows = await query(gateway.store_url, "SELECT status FROM tasks")  # type: ignore[attr-defined]
    assert rows and all(r["status"] in ("queued", "running") for r in rows)
    gateway.start()
    for task_id in ids:
        done = poll_task(gateway, key, task_id)
        assert done["status"] == "succeeded"
        assert done["result"]["response"] == "slow but sure"
