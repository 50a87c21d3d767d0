"""The reasoning log through a real ``guarita serve`` (SQLite, or PostgreSQL and Redis in
scale-out mode), against local servers speaking OpenAI's and Anthropic's documented wire
formats (tests/fakes; hosted endpoints cannot be reached from the test machine): an
answer's reasoning and tool calls, and a follow-up's tool results, are stored as steps,
PII-masked, and shown by ``/admin/requests/{id}``; old steps are purged; bad ids and roles
are answered in the error format."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from guarita.ops.steps_retention import StepRetention
from guarita.settings_steps import StepSettings
from guarita.store.database import Database
from tests.helpers import FakeUpstream, GuaritaServer, query, wait_until

CANARIES = ("4111 1111 1111 1111", "canary.person@example.com", "DE89 3704 0044 0532 0130 00",
            "529.982.247-25", "result.owner@example.org")  # fmt: skip


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    work = tmp_path_factory.mktemp("steps")
    oai = FakeUpstream("openai_upstream", work / "oai").start()
    ant = FakeUpstream("anthropic_upstream", work / "ant").start()
    config = {
        "models": {
            "r": {"provider": "openai", "base_url": oai.base_url + "/v1", "upstream": "reasoner"},
            "t": {"provider": "anthropic", "base_url": ant.base_url + "/v1", "upstream": "thinker",
                  "api_key_env": "TEST_UPSTREAM_KEY"},
        },
        "agents": {"assistant": {"model": "r"}},
        "steps": {"max_chars": 100},
    }  # fmt: skip
    gateway = GuaritaServer(work / "gw", config, env={"TEST_UPSTREAM_KEY": "k"})
    gateway.keys = {  # type: ignore[attr-defined]
        "viewer": gateway.cli("keys", "create", "--name", "view", "--tier", "pro",
                              "--role", "viewer").stdout.strip(),
        "user": gateway.create_key("user"),
    }  # fmt: skip
    gateway.start()
    yield gateway
    gateway.stop()
    oai.stop()
    ant.stop()


def _chat(server: GuaritaServer, request_id: str, **body: Any) -> None:
    headers = {**auth(server.keys["user"]), "x-request-id": request_id}  # type: ignore[attr-defined]
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", headers=headers,
                      json=body, timeout=30) as r:  # fmt: skip
        r.read()
        assert r.status_code == 200, r.text


def _show(server: GuaritaServer, request_id: str, key: str = "viewer") -> httpx.Response:
    return httpx.get(server.base_url + f"/admin/requests/{request_id}",
                     headers=auth(server.keys[key]), timeout=30)  # type: ignore[attr-defined]  # fmt: skip


def _steps(server: GuaritaServer, request_id: str, count: int) -> list[dict[str, Any]]:
    def stored() -> list[dict[str, Any]] | None:
        r = _show(server, request_id)
        if r.status_code != 200:
            return None
        steps: list[dict[str, Any]] = r.json()["records"][0]["steps"]
        return steps if len(steps) >= count else None

    return wait_until(stored, timeout=30, what=f"{count} steps of {request_id}")


def _no_canary(steps: list[dict[str, Any]]) -> None:
    for step in steps:
        for value in CANARIES:
            assert value not in step["content"], step


@pytest.mark.parametrize("stream", [False, True])
def test_openai_reasoning_tool_call_and_follow_up(server: GuaritaServer, stream: bool) -> None:
    rid = f"oai-{stream}"
    _chat(server, rid, model="r", stream=stream,
          messages=[{"role": "user", "content": "find canary.person@example.com"}])  # fmt: skip
    steps = _steps(server, rid, 2)
    assert [(s["step_index"], s["kind"], s["name"]) for s in steps] == [
        (0, "reasoning", None), (1, "tool_call", "lookup")]  # fmt: skip
    assert "[CARD]" in steps[0]["content"] and "[EMAIL]" in steps[1]["content"]
    assert steps[1]["call_id"] == "call_1" and '"q"' in steps[1]["content"]
    _no_canary(steps)
    record = _show(server, rid).json()["records"][0]
    assert record["request_id"] == rid and record["model"] == "r" and record["status"] == "success"

    follow = f"oai-follow-{stream}"
    long_result = "owner result.owner@example.org " + "x" * 200
    _chat(server, follow, model="r", stream=stream, messages=[
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q": "4111 1111 1111 1111"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": long_result},
    ])  # fmt: skip
    steps = _steps(server, follow, 4)
    assert [(s["kind"], s["name"]) for s in steps] == [
        ("tool_call", "lookup"), ("tool_result", "lookup"), ("reasoning", None),
        ("tool_call", "lookup")]  # fmt: skip
    result = steps[1]
    assert result["truncated"] and len(result["content"]) == 100
    assert result["content"].startswith("owner [EMAIL] x")
    assert not steps[0]["truncated"] and "[CARD]" in steps[0]["content"]
    _no_canary(steps)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_thinking_and_tool_use(server: GuaritaServer, stream: bool) -> None:
    rid = f"ant-{stream}"
    _chat(server, rid, model="t", stream=stream, messages=[{"role": "user", "content": "hi"}])
    steps = _steps(server, rid, 2)
    assert [(s["kind"], s["name"], s["call_id"]) for s in steps] == [
        ("reasoning", None, None), ("tool_call", "lookup", "toolu_1")]  # fmt: skip
    assert "[EMAIL]" in steps[0]["content"] and "[IBAN]" in steps[0]["content"]
    assert steps[1]["content"] == '{"cpf":"[CPF]"}'
    _no_canary(steps)


def test_a_plain_chat_has_no_steps_and_unknown_ids_are_404(server: GuaritaServer) -> None:
    _chat(server, "plain", model="r", messages=[{"role": "user", "content": "hi"}],
          tool_choice="none")  # fmt: skip
    r = _show(server, "no-such-request")
    assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found"
    assert _show(server, "x" * 129).status_code == 400
    assert _show(server, "bad%20id").status_code == 400
    assert _show(server, "oai-False", key="user").status_code == 403
    sql = "SELECT target, details FROM audit_log WHERE action = 'data.read'"
    reads = wait_until(lambda: asyncio.run(query(server.store_url, sql)) or None,
                       timeout=15, what="the data read's audit entry")  # fmt: skip
    assert any(r["target"] == "requests" for r in reads)


def test_retention_purges_old_steps_once(server: GuaritaServer) -> None:
    _steps(server, "oai-False", 2)
    old = datetime.now(UTC) - timedelta(days=40)

    async def purge() -> tuple[int, int, int]:
        db = Database(server.store_url)
        try:
            async with db.engine.begin() as conn:
                from sqlalchemy import text

                await conn.execute(
                    text(
                        "UPDATE request_steps SET created_at = :old WHERE request_id = 'oai-False'"
                    ),
                    {"old": old},
                )
            now = StepRetention(db, StepSettings(retention_days=30))
            first, second = await now.purge_once(), await now.purge_once()
            kept = await StepRetention(db, StepSettings(retention_days=50)).purge_once()
            return first, second, kept
        finally:
            await db.aclose()

    assert asyncio.run(purge()) == (2, 0, 0)
    r = _show(server, "oai-False")
    assert r.status_code == 200 and r.json()["records"][0]["steps"] == []
    assert _show(server, "oai-True").json()["records"][0]["steps"]
