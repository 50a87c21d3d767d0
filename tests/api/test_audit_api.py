"""The audit log through a real server (both run modes): failed authentications (the key's
short prefix only), admin calls with their outcome, data reads, key changes from the CLI
and the settings each process loaded; ``GET /admin/audit`` (admin only, filtered, paged,
400 for bad input); ``guarita audit verify`` passes, and fails once a row is edited."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from guarita.telemetry.audit import cli_actor, key_prefix
from tests.helpers import GuaritaServer, query, wait_until

CONFIG: dict[str, Any] = {
    "models": {"m": {"provider": "scripted"}},
    "agents": {"a": {"model": "m"}},
    "default_agent": "a",
    "audit": {"flush_interval_s": 0.1},
}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Gateway:
    server: GuaritaServer
    admin: str
    user: str
    ids: dict[str, str]

    def get(self, path: str, key: str | None = None, **params: Any) -> httpx.Response:
        headers = bearer(key) if key else {}
        return httpx.get(self.server.base_url + path, headers=headers, params=params, timeout=10)

    def audit(self, **params: Any) -> dict[str, Any]:
        response = self.get("/admin/audit", self.admin, limit=1000, **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_for(self, what: str, **params: Any) -> list[dict[str, Any]]:
        """The entries matching ``params`` once there is at least one."""
        found: list[dict[str, Any]] = wait_until(
            lambda: self.audit(**params)["data"], timeout=30, what=what
        )
        return found


def start(workdir: Path) -> Gateway:
    server = GuaritaServer(workdir, CONFIG)
    admin = server.create_key("ops", "admin")
    user = server.create_key("ana", "pro")
    listed = server.cli("keys", "list", "--json").stdout.splitlines()
    ids = {key["name"]: key["id"] for key in map(json.loads, listed)}
    server.start()
    return Gateway(server, admin, user, ids)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start(tmp_path_factory.mktemp("audit"))
    yield gw
    gw.server.stop()


def test_a_failed_authentication_is_audited_with_the_key_prefix_only(gateway: Gateway) -> None:
    wrong = "gua_" + secrets.token_urlsafe(32)
    request_id = "audit-" + secrets.token_hex(8)
    refused = httpx.get(
        gateway.server.base_url + "/v1/models",
        headers={**bearer(wrong), "x-request-id": request_id},
        timeout=10,
    )
    assert refused.status_code == 401
    assert gateway.get("/v1/models").status_code == 401  # no key at all
    prefix = key_prefix(wrong)
    assert prefix.startswith("gua_") and len(prefix) < 12
    [entry] = gateway.wait_for("the failed authentication", actor=prefix)
    assert entry["action"] == "auth.failed" and entry["category"] == "access"
    assert (entry["outcome"], entry["target"]) == ("denied", "/v1/models")
    assert entry["request_id"] == request_id and entry["client_ip"] == "127.0.0.1"
    assert entry["details"] == {"method": "GET", "reason": "invalid_key"}
    missing = gateway.wait_for("the call without a key", action="auth.failed", actor="missing")
    assert missing[-1]["details"]["reason"] == "missing_key"
    stored = asyncio.run(query(gateway.server.store_url, "SELECT * FROM audit_log"))
    everything = json.dumps(stored, default=str)
    assert wrong not in everything and wrong[7:20] not in everything  # never the key itself
    assert gateway.admin not in everything and gateway.user not in everything


def test_admin_calls_are_audited_with_their_outcome(gateway: Gateway) -> None:
    ops, ana = gateway.ids["ops"], gateway.ids["ana"]
    assert gateway.get("/admin/breakers", gateway.admin).status_code == 200
    assert gateway.get("/admin/usage", gateway.admin, since="not-a-date").status_code == 400
    assert gateway.get("/admin/breakers", gateway.user).status_code == 403
    [ok] = gateway.wait_for("the admin call", action="admin.listBreakers", actor=ops)
    assert (ok["outcome"], ok["target"], ok["category"]) == ("success", "/admin/breakers", "access")
    assert ok["details"] == {"method": "GET", "status": 200}
    [bad] = gateway.wait_for("the bad admin call", action="admin.usageReport", outcome="failure")
    assert bad["actor"] == ops and bad["details"]["status"] == 400
    [denied] = gateway.wait_for("the refused admin call", action="admin.listBreakers", actor=ana)
    assert denied["outcome"] == "denied" and denied["details"]["status"] == 403


def test_a_non_admin_key_gets_403_on_the_audit_and_that_is_audited(gateway: Gateway) -> None:
    refused = gateway.get("/admin/audit", gateway.user)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    [entry] = gateway.wait_for(
        "the refused audit read", action="admin.listAudit", actor=gateway.ids["ana"]
    )
    assert entry["outcome"] == "denied" and entry["target"] == "/admin/audit"
    reads = gateway.audit(action="data.read", target="audit_log", actor=gateway.ids["ana"])
    assert reads["data"] == []  # refused: nothing was read


def test_reading_the_audit_and_usage_is_audited(gateway: Gateway) -> None:
    ops = gateway.ids["ops"]
    gateway.get("/admin/audit", gateway.admin, action="auth.failed", limit=5)
    assert gateway.get("/admin/usage", gateway.admin, key_id="key_x").status_code == 200
    filtered = {"filters": {"action": "auth.failed"}}

    def the_read() -> list[dict[str, Any]]:
        reads = gateway.audit(action="data.read", target="audit_log", actor=ops)["data"]
        return [r for r in reads if r["details"] == filtered]

    [read] = wait_until(the_read, timeout=30, what="the audit read")
    assert (read["category"], read["outcome"]) == ("data", "success")
    [usage] = gateway.wait_for("the usage read", action="data.read", target="requests")
    assert usage["category"] == "data" and usage["details"]["filters"]["key_id"] == "key_x"


def test_filters_and_pagination(gateway: Gateway) -> None:
    actor = key_prefix("gua_not-a-real-key-at-all")
    for _ in range(5):
        assert gateway.get("/v1/models", "gua_not-a-real-key-at-all").status_code == 401
    wait_until(
        lambda: len(gateway.audit(action="auth.failed", actor=actor)["data"]) == 5,
        timeout=30,
        what="five failed authentications",
    )
    everything = gateway.audit(action="auth.failed")
    assert not everything["has_more"]
    seen: list[int] = []
    after: int | None = None
    while True:
        params: dict[str, Any] = {"action": "auth.failed", "limit": 2}
        if after is not None:
            params["after"] = after
        page = gateway.get("/admin/audit", gateway.admin, **params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [e["seq"] for e in page["data"]]
        if not page["has_more"]:
            break
        assert page["last_seq"] == page["data"][-1]["seq"]
        after = page["last_seq"]
    assert seen == [e["seq"] for e in everything["data"]] == sorted(set(seen))
    assert all(e["action"] == "auth.failed" for e in everything["data"])
    denied = gateway.audit(category="access", outcome="denied")["data"]
    assert denied and all((e["category"], e["outcome"]) == ("access", "denied") for e in denied)
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert gateway.audit(since=future) == {
        "object": "list", "data": [], "has_more": False, "last_seq": None
    }  # fmt: skip
    assert gateway.audit(until="2001-01-01")["data"] == []
    last = gateway.audit()["data"]
    assert [e["seq"] for e in last] == list(range(1, len(last) + 1))  # one chain, no gaps


@pytest.mark.parametrize(
    "params",
    [
        {"after": "abc"},
        {"after": "-1"},
        {"after": str(2**63)},
        {"after": "1\x00"},
        {"after": "1.5"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"actor": "a\x00b"},
        {"action": "\x00"},
        {"target": "t" * 501},
        {"since": "yesterday"},
        {"until": "2026-13-01"},
        {"category": "nope"},
        {"outcome": "maybe"},
    ],
)
def test_bad_query_parameters_are_400s(gateway: Gateway, params: dict[str, str]) -> None:
    response = gateway.get("/admin/audit", gateway.admin, **params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_key_changes_and_settings_loads_are_audited(gateway: Gateway) -> None:
    server = gateway.server
    created = gateway.wait_for("the keys created", action="key.created")
    by_target = {e["target"]: e for e in created}
    ana = by_target[gateway.ids["ana"]]
    assert ana["actor"] == cli_actor() and ana["category"] == "change"
    assert ana["details"] == {"tier": "pro", "limits": None, "roles": None, "expires_at": None}
    extra = server.create_key("temp", "free")
    temp_id = next(
        k["id"]
        for k in map(json.loads, server.cli("keys", "list", "--json").stdout.splitlines())
        if k["name"] == "temp"
    )
    server.cli("keys", "update", temp_id, "--rpm", "7")
    server.cli("keys", "revoke", temp_id)
    assert server.cli("keys", "revoke", "key_doesnotexist", check=False).returncode == 1
    [updated] = gateway.wait_for("the update", action="key.updated", target=temp_id)
    assert updated["details"]["limits"] == {"requests_per_minute": 7}
    [revoked] = gateway.wait_for("the revocation", action="key.revoked", target=temp_id)
    assert revoked["outcome"] == "success"
    [failed] = gateway.wait_for("the failed revocation", target="key_doesnotexist")
    assert failed["outcome"] == "failure"
    everything = json.dumps(gateway.audit()["data"])
    assert extra not in everything and extra[4:16] not in everything
    loads = gateway.wait_for("the settings load", action="settings.loaded", actor="process:api")
    details = loads[0]["details"]
    assert details["config_file"] == str(server.config_path.resolve())
    assert len(details["digest"]) == 64 and details["role"] == "api"


def test_file_downloads_are_audited(gateway: Gateway) -> None:
    line = (
        b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", '
        b'"body": {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}}\n'
    )
    uploaded = httpx.post(
        gateway.server.base_url + "/v1/files",
        headers=bearer(gateway.user),
        files={"file": ("in.jsonl", line)},
        data={"purpose": "batch"},
        timeout=10,
    )
    file_id = uploaded.json()["id"]
    assert gateway.get(f"/v1/files/{file_id}/content", gateway.user).content == line
    assert gateway.get(f"/v1/files/{file_id}/content", gateway.admin).status_code == 404
    wait_until(
        lambda: len(gateway.audit(action="data.read", target=f"file:{file_id}")["data"]) == 2,
        timeout=30,
        what="both downloads",
    )
    reads = gateway.audit(action="data.read", target=f"file:{file_id}")["data"]
    outcomes = {e["actor"]: e["outcome"] for e in reads}
    assert outcomes == {gateway.ids["ana"]: "success", gateway.ids["ops"]: "failure"}


def test_audit_metrics(gateway: Gateway) -> None:
    gateway.get("/v1/models", "gua_wrong-key-for-metrics")
    metrics = httpx.get(gateway.server.base_url + "/metrics", timeout=10).text
    assert 'guarita_audit_entries_total{category="access",outcome="denied"}' in metrics
    assert "guarita_audit_pending" in metrics and "guarita_audit_spooled" in metrics


def test_the_cli_lists_and_verifies_then_an_edited_row_fails(tmp_path: Path) -> None:
    gw = start(tmp_path)
    try:
        gw.get("/admin/breakers", gw.admin)
        gw.get("/v1/models", "gua_wrong-key-for-verify")
        gw.wait_for("the failed authentication", action="auth.failed")
        listed = gw.server.cli("audit", "list", "--json", "--action", "key.created").stdout
        created = [json.loads(line) for line in listed.splitlines()]
        assert {e["target"] for e in created} == set(gw.ids.values())
        verified = gw.server.cli("audit", "verify")
        assert verified.stdout.startswith("ok: ") and "entries" in verified.stdout
        assert int(verified.stdout.split()[1]) >= 5
        table = gw.server.cli("audit", "list", "--actor", cli_actor(), "--limit", "1").stdout
        assert "key.created" in table
        seq = created[1]["seq"]
        asyncio.run(execute(gw.server.store_url, "UPDATE audit_log SET target = 'key_forged' "
                            f"WHERE seq = {seq}"))  # fmt: skip
        broken = gw.server.cli("audit", "verify", check=False)
        assert broken.returncode == 1, broken.stdout
        assert f"broken at seq {seq}" in broken.stderr and "edited" in broken.stderr
    finally:
        gw.server.stop()


async def execute(store_url: str, sql: str) -> None:
    engine = create_async_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()
