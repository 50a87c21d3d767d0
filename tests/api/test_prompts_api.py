"""The prompt registry end to end: a two-process server (SQLite, or PostgreSQL, Redis and
Celery in scale-out mode) whose agent names ``support@production``; prompts pushed and
labelled by the CLI and under ``/admin/prompts``; the scripted model echoes the system
prompt it was sent, so the answers show which version every process uses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import GuaritaServer, query, wait_until

pytestmark = pytest.mark.slow


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    config = {
        "models": {"m": {"provider": "scripted", "options": {"echo": "system"}},
                   "big": {"provider": "scripted", "options": {"echo": "system"}}},
        "agents": {
            "support": {"model": "m", "prompt": "support@production",
                        "prompt_variables": {"product": "Guarita"}},
            "orphan": {"model": "m", "prompt": "missing@production"},
            "plain": {"model": "m", "system_prompt": "inline"},
        },
        "default_agent": "plain",
    }  # fmt: skip
    workdir = Path(tmp_path_factory.mktemp("prompts"))
    gateway = GuaritaServer(workdir, config, workers=2)
    keys = {
        "operator": gateway.cli("keys", "create", "--name", "op", "--tier", "pro",
                                "--role", "operator").stdout.strip(),
        "viewer": gateway.cli("keys", "create", "--name", "view", "--tier", "pro",
                              "--role", "viewer").stdout.strip(),
        "user": gateway.create_key("user", "pro"),
    }  # fmt: skip
    gateway.keys = keys  # type: ignore[attr-defined]
    v1 = workdir / "support.yaml"
    v1.write_text(yaml.safe_dump({
        "name": "support", "template": "You support {{ product }} (v1).",
        "variables": ["product"], "model": {"temperature": 0.1}, "author": "ana",
        "tags": ["support"], "message": "first",
    }))  # fmt: skip
    pushed = gateway.cli("prompts", "push", str(v1), "--label", "production")
    assert "pushed support@1" in pushed.stdout and "label production -> 1" in pushed.stdout
    gateway.start()
    yield gateway
    gateway.stop()


def chat(server: GuaritaServer, agent: str, message: str = "hi") -> httpx.Response:
    # a new connection each: both processes answer
    headers = {**auth(server.keys["user"]), "connection": "close"}  # type: ignore[attr-defined]
    return httpx.post(server.base_url + "/api/chat", headers=headers,
                      json={"agent": agent, "message": message}, timeout=30)  # fmt: skip


def answers(server: GuaritaServer, n: int = 16) -> set[str]:
    return {chat(server, "support").json()["response"] for _ in range(n)}


def records(server: GuaritaServer, request_id: str) -> list[dict[str, Any]]:
    sql = "SELECT prompt_name, prompt_version, prompt_hash FROM requests WHERE request_id = :r"
    return asyncio.run(query(server.store_url, sql, r=request_id))


def test_the_agent_sends_the_rendered_prompt_and_records_its_version(server: GuaritaServer) -> None:
    r = chat(server, "support")
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "echo: You support Guarita (v1)."
    shown = json.loads(server.cli("prompts", "show", "support@production", "--json").stdout)
    assert shown["version"] == 1 and shown["labels"] == {"production": 1}
    assert shown["template"] == [{"role": "system", "content": "You support {{ product }} (v1)."}]
    request_id = r.json()["request_id"]
    [row] = wait_until(lambda: records(server, request_id), timeout=10, what="the record")
    assert row == {"prompt_name": "support", "prompt_version": 1, "prompt_hash": shown["sha256"]}
    plain = chat(server, "plain")
    assert plain.json()["response"] == "echo: inline"


def test_a_moved_label_is_used_by_every_process_within_one_second(server: GuaritaServer) -> None:
    operator = auth(server.keys["operator"])  # type: ignore[attr-defined]
    body = {"name": "support", "template": "You support {{ product }} (v2).",
            "model": {"temperature": 0.1}, "message": "second"}  # fmt: skip
    pushed = httpx.post(server.base_url + "/admin/prompts", headers=operator, json=body)
    assert pushed.status_code == 201, pushed.text
    assert pushed.json()["version"]["version"] == 2 and pushed.json()["created"] is True
    again = httpx.post(server.base_url + "/admin/prompts", headers=operator, json=body)
    assert again.status_code == 200 and again.json()["version"]["version"] == 2
    assert again.json()["created"] is False
    assert answers(server) == {"echo: You support Guarita (v1)."}, "the label has not moved"

    server.cli("prompts", "label", "support", "2", "production", "--expect-version", "1")
    wait_until(lambda: answers(server) == {"echo: You support Guarita (v2)."}, timeout=1.0,
               interval=0.02, what="every process to use support@2 within 1 s")  # fmt: skip

    url = server.base_url + "/admin/prompts/support/labels/production"
    back = httpx.put(url, headers=operator, json={"version": 1, "expected_version": 2})
    assert back.status_code == 200, back.text
    assert back.json()["version"] == 1 and back.json()["revision"] == 3
    wait_until(lambda: answers(server) == {"echo: You support Guarita (v1)."}, timeout=1.0,
               interval=0.02, what="every process to use support@1 within 1 s")  # fmt: skip
    stale = httpx.put(url, headers=operator, json={"version": 2, "expected_version": 2})
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "label_conflict"
    refused = server.cli("prompts", "label", "support", "2", "production", "--expect-version",
                         "2", check=False)  # fmt: skip
    assert refused.returncode == 1 and "not moved" in refused.stderr


def test_reading_and_changing_need_their_roles(server: GuaritaServer) -> None:
    keys = server.keys  # type: ignore[attr-defined]
    base = server.base_url + "/admin/prompts"
    viewer, user = auth(keys["viewer"]), auth(keys["user"])
    listed = httpx.get(base, headers=viewer)
    assert listed.status_code == 200
    [support] = [p for p in listed.json() if p["name"] == "support"]
    assert support["latest"] >= 1 and "production" in support["labels"]
    assert httpx.get(base + "/support", headers=viewer).json()["versions"][0]["version"] == 1
    assert httpx.get(base + "/support/versions/1", headers=viewer).json()["author"] == "ana"
    assert httpx.get(base, headers=user).status_code == 403
    move = httpx.put(base + "/support/labels/production", headers=viewer, json={"version": 1})
    assert move.status_code == 403 and move.json()["error"]["type"] == "permission_error"
    push = httpx.post(base, headers=viewer, json={"name": "x", "template": "hi"})
    assert push.status_code == 403
    assert httpx.get(base).status_code == 401


def test_diffs_from_the_api_and_the_cli(server: GuaritaServer) -> None:
    viewer = auth(server.keys["viewer"])  # type: ignore[attr-defined]
    operator = auth(server.keys["operator"])  # type: ignore[attr-defined]
    base = server.base_url + "/admin/prompts"
    for text in ("Be brief.\nBe kind.", "Be brief.\nBe exact."):
        r = httpx.post(base, headers=operator, json={"name": "diffed", "template": text})
        assert r.status_code == 201
    diff = httpx.get(base + "/diffed/diff", headers=viewer, params={"a": 1, "b": 2}).json()
    assert "-Be kind." in diff["diff"] and "+Be exact." in diff["diff"]
    cli = server.cli("prompts", "diff", "diffed", "1", "2").stdout
    assert cli == diff["diff"]
    listed = server.cli("prompts", "list", "--json").stdout.splitlines()
    assert {json.loads(line)["name"] for line in listed} >= {"support", "diffed"}


def test_bad_input_and_missing_prompts_get_clear_errors(server: GuaritaServer) -> None:
    operator = auth(server.keys["operator"])  # type: ignore[attr-defined]
    base = server.base_url + "/admin/prompts"
    orphan = chat(server, "orphan")
    assert orphan.status_code == 404
    assert orphan.json()["error"]["code"] == "prompt_not_found"
    cases = [
        {"name": "x", "template": "{% if %}"},
        {"name": "x", "template": "hi", "model": {"model": "not-configured"}},
        {"name": "x", "template": "hi", "model": {"temperature": "hot"}},
        {"name": "bad name", "template": "hi"},
        {"name": "x"},
    ]
    for body in cases:
        r = httpx.post(base, headers=operator, json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.get(base + "/nope/versions/1", headers=operator)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "prompt_not_found"
    move = httpx.put(base + "/support/labels/production", headers=operator, json={"version": 99})
    assert move.status_code == 404
    assert httpx.get(base + "/support/diff", headers=operator, params={"a": 0}).status_code == 400


def test_pushes_and_label_moves_are_audited(server: GuaritaServer) -> None:
    sql = ("SELECT action, actor, target, outcome, details FROM audit_log "
           "WHERE action IN ('prompt.pushed', 'prompt.label_moved') ORDER BY seq")  # fmt: skip

    def entries() -> list[dict[str, Any]]:
        found = asyncio.run(query(server.store_url, sql))
        return found if any(e["outcome"] == "failure" for e in found) else []

    found = wait_until(entries, timeout=10, what="the audit entries")
    moves = [e for e in found if e["action"] == "prompt.label_moved"]
    actors = {e["actor"].split(":")[0].split("_")[0] for e in moves if e["outcome"] == "success"}
    assert actors == {"cli", "key"}, moves
    assert all(e["target"] == "support@production" for e in moves)
    assert any(e["outcome"] == "failure" for e in moves)
    assert any(e["action"] == "prompt.pushed" and e["target"] == "support" for e in found)
