"""Error budgets through a real ``guarita serve`` (SQLite, or PostgreSQL and Redis in
scale-out mode): an agent whose every call fails uses up its availability budget, the
background evaluation freezes it once (one audit entry), ``/admin/slo`` and
``guarita slo status`` show it, the per-record counter is on ``/metrics``, and bad input
is answered in the error format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import GuaritaServer, query, wait_until


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    config = {
        "models": {"m": {"provider": "scripted", "options": {"reply": "fine"}},
                   "broken": {"provider": "scripted", "chaos": {"error_rate": 1.0}}},
        "agents": {"fine": {"model": "m"}, "flaky": {"model": "broken"}},
        "default_agent": "fine",
        "slo": {"evaluate_every_s": 0.2, "freeze": {"min_events": 5},
                "agents": {"fine": {"availability": 0.999}}},
    }  # fmt: skip
    gateway = GuaritaServer(tmp_path_factory.mktemp("slo"), config)
    gateway.keys = {  # type: ignore[attr-defined]
        "viewer": gateway.cli("keys", "create", "--name", "view", "--tier", "pro",
                              "--role", "viewer").stdout.strip(),
        "user": gateway.create_key("user"),
    }  # fmt: skip
    gateway.start()
    yield gateway
    gateway.stop()


def _slo(server: GuaritaServer, **params: str) -> httpx.Response:
    key = server.keys["viewer"]  # type: ignore[attr-defined]
    return httpx.get(server.base_url + "/admin/slo", headers=auth(key), params=params, timeout=30)


def _by(body: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["agent"], s["slo"]): s for s in body}


def test_a_failing_agent_uses_up_its_budget_and_freezes_once(server: GuaritaServer) -> None:
    user = auth(server.keys["user"])  # type: ignore[attr-defined]
    for agent in ("fine", "flaky"):
        for i in range(6):
            r = httpx.post(server.base_url + "/api/chat", headers=user,
                           json={"agent": agent, "message": f"hi {i}"}, timeout=30)  # fmt: skip
            assert (r.status_code == 200) == (agent == "fine"), r.text

    def frozen() -> dict[tuple[str, str], dict[str, Any]] | None:
        found = _by(_slo(server).json())
        flaky = found["flaky", "availability"]
        return found if flaky["frozen"] and flaky["total"] == 6 else None

    found = wait_until(frozen, timeout=30, what="the flaky agent frozen")
    flaky, fine = found["flaky", "availability"], found["fine", "availability"]
    assert flaky["good"] == 0 and flaky["budget"] == "exhausted"
    assert flaky["consumed"] == pytest.approx(100.0)  # every call of a 1% budget
    assert flaky["remaining"] == pytest.approx(-99.0) and flaky["time_to_exhaustion_s"] == 0
    assert flaky["alert"] == "page" and flaky["burn_rates"]["5m"] == pytest.approx(100.0)
    assert fine["target"] == 0.999 and (fine["good"], fine["total"]) == (6, 6)
    assert fine["budget"] == "ok" and not fine["frozen"] and fine["alert"] == "ok"
    assert fine["time_to_exhaustion_s"] is None and fine["remaining"] == 1.0
    assert {s for a, s in found if a == "fine"} == {"availability", "quality", "consistency"}

    sql = "SELECT action, target FROM audit_log WHERE action LIKE 'deploy.%'"
    entries = wait_until(lambda: asyncio.run(query(server.store_url, sql)) or None,
                         timeout=15, what="the freeze's audit entry")  # fmt: skip
    assert entries == [{"action": "deploy.frozen", "target": "agent:flaky"}]

    metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    assert 'guarita_slo_events_total{agent="flaky",outcome="bad",slo="availability"} 6.0' in metrics
    assert 'guarita_deploy_frozen{agent="flaky",slo="availability"} 1.0' in metrics

    shown = json.loads(server.cli("slo", "status", "--agent", "flaky", "--json").stdout)
    assert _by(shown)["flaky", "availability"]["frozen"] is True
    assert _by(shown)["flaky", "availability"]["total"] == 6
    table = server.cli("slo", "status").stdout
    assert "flaky" in table and "page" in table  # its alert (columns fold when narrow)


def test_the_agent_filter_and_bad_input(server: GuaritaServer) -> None:
    only = _slo(server, agent="fine").json()
    assert {s["agent"] for s in only} == {"fine"}
    missing = _slo(server, agent="nobody")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "agent_not_found"
    too_long = _slo(server, agent="x" * 201)
    assert too_long.status_code == 400 and "error" in too_long.json()
    user = httpx.get(server.base_url + "/admin/slo", timeout=10,
                     headers=auth(server.keys["user"]))  # type: ignore[attr-defined]  # fmt: skip
    assert user.status_code == 403


def test_the_rules_command_writes_the_configured_rules(server: GuaritaServer) -> None:
    rules = server.cli("slo", "rules").stdout
    assert "expr: vector(0.999)" in rules and "agent: flaky" in rules
    assert "GuaritaErrorBudgetBurnPage" in rules
