"""The operator endpoints: admin keys only; breakers show an opened one; the response
cache reports its entries and lookups and is cleared by namespace, also from the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
            "cached": {"provider": "scripted", "cache": {"mode": "exact"}},
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


def test_the_cache_is_reported_and_cleared(server: GuaritaServer) -> None:
    user = {"authorization": f"Bearer {server.user_key}"}  # type: ignore[attr-defined]
    admin = {"authorization": f"Bearer {server.admin_key}"}  # type: ignore[attr-defined]
    body = {"model": "cached", "messages": [{"role": "user", "content": "cache this"}]}
    seen = [
        httpx.post(server.base_url + "/v1/chat/completions", headers=user, json=body).headers[
            "x-guarita-cache"
        ]
        for _ in range(2)
    ]
    assert seen == ["miss", "hit"]
    assert httpx.get(server.base_url + "/admin/cache", headers=user).status_code == 403
    report = httpx.get(server.base_url + "/admin/cache", headers=admin).json()
    assert report["enabled"] is True and report["entries"] == 1
    assert report["lookups"]["hit"] == 1 and report["lookups"]["miss"] == 1
    assert report["hit_ratio"] == 0.5
    metrics = httpx.get(server.base_url + "/metrics").text
    assert re.search(r"^guarita_cache_hit_ratio(\{[^}]*\})? 0\.5$", metrics, re.M)
    if report["store"] == "process":  # in Redis the entries are every process's: no gauge
        assert re.search(r"^guarita_cache_entries(\{[^}]*\})? 1\.0$", metrics, re.M)
    assert 'guarita_cache_lookups_total{result="hit"} 1.0' in metrics
    cli = [sys.executable, "-m", "guarita.cli", "cache"]
    env = {**os.environ, "GUARITA_ADMIN_KEY": server.admin_key}  # type: ignore[attr-defined]
    stats = subprocess.run([*cli, "stats", "--url", server.base_url], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stats.returncode == 0 and '"entries": 1' in stats.stdout
    other = httpx.post(server.base_url + "/admin/cache/clear", headers=admin,
                       json={"namespace": "agent:nobody"})  # fmt: skip
    assert other.json() == {"cleared": 0}
    bad = httpx.post(server.base_url + "/admin/cache/clear", headers=admin,
                     json={"namespace": "everything"})  # fmt: skip
    assert bad.status_code == 400 and "namespace" in bad.json()["error"]["message"]
    cleared = subprocess.run([*cli, "clear", "--url", server.base_url], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cleared.returncode == 0 and "cleared 1 entries" in cleared.stdout
    again = httpx.post(server.base_url + "/v1/chat/completions", headers=user, json=body)
    assert again.headers["x-guarita-cache"] == "miss"
