"""Rollouts end to end over HTTP: a two-process server (SQLite, or PostgreSQL, Redis and
Celery in scale-out mode), rollouts started and moved by the CLI and under
``/admin/rollouts``; both processes route by a rollout within 1 s, both run the
evaluator, and a decision is taken once; errors in the documented format, roles."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import GuaritaServer, query, wait_until
from tests.ops.rollout_support import CANARY, CHANGE_TYPES, OFF_TOPIC, scripted

pytestmark = pytest.mark.slow


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    config = {
        "models": {"stable": scripted(), "twin": scripted(), "offtopic": scripted(reply=OFF_TOPIC)},
        "agents": {"plain": {"model": "stable", "system_prompt": "You help."},
                   "other": {"model": "stable"}},
        "default_agent": "plain",
        "rollouts": {"canary": CANARY, "change_types": CHANGE_TYPES, "evaluate_every_s": 0.2},
    }  # fmt: skip
    workdir = Path(tmp_path_factory.mktemp("rollouts"))
    gateway = GuaritaServer(workdir, config, workers=2)
    gateway.keys = {  # type: ignore[attr-defined]
        "operator": gateway.cli("keys", "create", "--name", "op", "--tier", "enterprise",
                                "--role", "operator").stdout.strip(),
        "viewer": gateway.cli("keys", "create", "--name", "view", "--tier", "enterprise",
                              "--role", "viewer").stdout.strip(),
        "user": gateway.create_key("user"),
    }  # fmt: skip
    gateway.start()
    yield gateway
    gateway.stop()


def keys(server: GuaritaServer) -> dict[str, str]:
    found: dict[str, str] = server.keys  # type: ignore[attr-defined]
    return found


def cli(server: GuaritaServer, *args: str, key: str = "operator", check: bool = True) -> Any:
    server.env.update(GUARITA_ADMIN_KEY=keys(server)[key], COLUMNS="200")
    try:
        return server.cli("rollout", *args, "--url", server.base_url, check=check)
    finally:
        del server.env["GUARITA_ADMIN_KEY"], server.env["COLUMNS"]


def chat(server: GuaritaServer, agent: str = "plain") -> httpx.Response:
    # a new connection each, so that both processes answer; a session each, so that both
    # arms are hit
    headers = {**auth(keys(server)["user"]), "connection": "close"}
    body = {"agent": agent, "message": f"What is the capital of France? {secrets.token_hex(3)}",
            "session_id": secrets.token_hex(8)}  # fmt: skip
    return httpx.post(server.base_url + "/api/chat", headers=headers, json=body, timeout=30)


def answers(server: GuaritaServer, n: int = 24) -> set[bool]:
    """Whether each answer was the off-topic candidate's."""
    return {chat(server).json()["response"] == OFF_TOPIC for _ in range(n)}


def decisions(server: GuaritaServer, rollout_id: str) -> list[dict[str, Any]]:
    sql = "SELECT action, actor FROM rollout_decisions WHERE rollout_id = :r ORDER BY id"
    return asyncio.run(query(server.store_url, sql, r=rollout_id))


def test_both_processes_route_judge_once_and_roll_back(server: GuaritaServer) -> None:
    started = cli(server, "start", "--agent", "plain", "--change-type", "model_swap",
                  "--candidate-model", "offtopic", "--json")  # fmt: skip
    rollout = json.loads(started.stdout)
    assert (rollout["state"], rollout["percent"], rollout["stable_model"]) == (
        "canary",
        50,
        "stable",
    )
    wait_until(lambda: answers(server) == {True, False}, timeout=1.0, interval=0.02,
               what="both processes to route half the traffic to the candidate")  # fmt: skip

    def rolled_back() -> bool:
        for _ in range(20):
            chat(server)
        shown = cli(server, "status", rollout["id"], "--json", key="viewer")
        return bool(json.loads(shown.stdout)["state"] == "rolled_back")

    wait_until(rolled_back, timeout=120, interval=0, what="the rollback")
    assert [d["action"] for d in decisions(server, rollout["id"])] == ["start", "rollback"]
    wait_until(
        lambda: answers(server) == {False},
        timeout=1.0,
        interval=0.02,
        what="every process to send all traffic to the stable model within 1 s",
    )
    report = json.loads(cli(server, "report", rollout["id"], key="viewer").stdout)
    assert [d["action"] for d in report["decisions"]] == ["start", "rollback"]
    assert {s["variant"] for s in report["stages"]} == {"stable", "canary"}
    assert any("quality" in r for r in report["decisions"][-1]["reasons"])
    table = cli(server, "status", key="viewer").stdout
    assert rollout["id"] in table and "rolled_back" in table
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'guarita_rollout_decisions_total{action="rollback",agent="plain"}' in metrics


def test_moves_and_their_refusals(server: GuaritaServer) -> None:
    base = server.base_url + "/admin/rollouts"
    operator, viewer, user = (auth(keys(server)[k]) for k in ("operator", "viewer", "user"))
    body = {"agent": "other", "change_type": "model_swap", "candidate_model": "twin"}
    created = httpx.post(base, headers=operator, json=body)
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    busy = httpx.post(base, headers=operator, json=body)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "rollout_active"
    paused = httpx.post(f"{base}/{rollout_id}/pause", headers=operator)
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    twice = httpx.post(f"{base}/{rollout_id}/pause", headers=operator)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "rollout_state"
    assert httpx.post(f"{base}/{rollout_id}/resume", headers=operator).json()["state"] == "canary"
    refused = cli(server, "approve", rollout_id, check=False)
    assert refused.returncode == 1 and "cannot be approved" in refused.stderr
    aborted = cli(server, "abort", rollout_id)
    assert "aborted" in aborted.stdout
    listed = httpx.get(base, headers=viewer, params={"agent": "other"})
    assert [r["state"] for r in listed.json()] == ["aborted"]
    actions = [d["action"] for d in decisions(server, rollout_id)]
    assert actions == ["start", "pause", "resume", "abort"]

    errors = [
        ({**body, "change_type": "nonsense"}, 400, "unknown_change_type"),
        ({**body, "agent": "nobody"}, 404, "agent_not_found"),
        ({**body, "candidate_model": "nope"}, 404, "model_not_found"),
        ({"agent": "other", "change_type": "model_swap"}, 400, "candidate_required"),
        ({**body, "extra": 1}, 400, None),
    ]
    for payload, status, code in errors:
        answer = httpx.post(base, headers=operator, json=payload)
        assert answer.status_code == status, (payload, answer.text)
        error = answer.json()["error"]
        assert error["type"] in ("invalid_request_error", "not_found_error")
        if code is not None:
            assert error["code"] == code, answer.text
    missing = httpx.get(f"{base}/ro_missing", headers=viewer)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "rollout_not_found"
    assert httpx.get(f"{base}/ro_missing/report", headers=viewer).status_code == 404
    assert httpx.post(f"{base}/ro_missing/abort", headers=operator).status_code == 404

    # reading needs viewer, moving operator
    assert httpx.get(base, headers=user).status_code == 403
    for path in ("", f"/{rollout_id}/pause", f"/{rollout_id}/abort", f"/{rollout_id}/approve"):
        denied = httpx.post(base + path, headers=viewer, json=body if not path else None)
        assert denied.status_code == 403, path
        assert denied.json()["error"]["type"] == "permission_error"
    assert httpx.get(base).status_code == 401
    denied_cli = cli(server, "start", "--agent", "other", "--change-type", "model_swap",
                     "--candidate-model", "twin", key="viewer", check=False)  # fmt: skip
    assert denied_cli.returncode == 1 and "lacks that role" in denied_cli.stderr
    no_candidate = cli(server, "start", "--agent", "other", "--change-type", "model_swap",
                       check=False)  # fmt: skip
    assert no_candidate.returncode == 2
