"""The operator endpoint for breakers: admin keys only, and it shows an opened breaker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import GuaritaServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    config = {
        "models": {
            "ok": {"provider": "scripted"},
            "broken": {
                "provider": "scripted",
                "options": {"fail_every": 1},
                "retry": {"max_attempts": 1},
                "breaker": {"failure_threshold": 2, "open_s": 600},
            },
        },
        "agents": {"a": {"model": "ok"}},
        "default_agent": "a",
    }
    gateway = GuaritaServer(Path(tmp_path_factory.mktemp("admin")), config)
    gateway.admin_key = gateway.create_key("ops", "admin")  # type: ignore[attr-defined]
    gateway.user_key = gateway.create_key("user", "pro")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def test_breakers_need_an_admin_key(server: GuaritaServer) -> None:
    user = server.user_key  # type: ignore[attr-defined]
    r = httpx.get(server.base_url + "/admin/breakers", headers={"authorization": f"Bearer {user}"})
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error"
    assert httpx.get(server.base_url + "/admin/breakers").status_code == 401


def test_an_open_breaker_is_visible_and_stops_calls(server: GuaritaServer) -> None:
    user = {"authorization": f"Bearer {server.user_key}"}  # type: ignore[attr-defined]
    body = {"model": "broken", "messages": [{"role": "user", "content": "x"}]}
    statuses = [
        httpx.post(server.base_url + "/v1/chat/completions", headers=user, json=body).status_code
        for _ in range(4)
    ]
    assert statuses[:2] == [502, 502]  # the deployment's own failures
    assert statuses[2:] == [503, 503]  # then the open breaker answers without calling it
    admin = {"authorization": f"Bearer {server.admin_key}"}  # type: ignore[attr-defined]
    report = httpx.get(server.base_url + "/admin/breakers", headers=admin).json()
    [deployment] = report["models"]["broken"]["deployments"]
    assert deployment["breaker"]["state"] == "open"
    assert report["models"]["ok"]["deployments"][0]["breaker"]["state"] == "closed"
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'guarita_circuit_state{deployment="broken"} 2.0' in metrics
    transition = 'deployment="broken",from_state="closed",to_state="open"'
    assert f"guarita_circuit_transitions_total{{{transition}}} 1.0" in metrics
