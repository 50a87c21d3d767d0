"""``GET /admin/usage`` and ``guarita usage`` on a real server: calls made with two keys
show up per key once their records are written, the model that answered counts a fallback,
only admin keys may look, and the CLI reads the same numbers as the endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import GuaritaServer, wait_until

CONFIG: dict[str, Any] = {
    "models": {
        # $1 per 1M input tokens, $2 per 1M output tokens
        "m": {"provider": "scripted", "price_input_per_1m": 1, "price_output_per_1m": 2},
        "flaky": {
            "provider": "scripted",
            "options": {"fail_every": 1},
            "retry": {"max_attempts": 1},
            "fallbacks": ["m"],
        },
    },
    "agents": {"helper": {"model": "m"}},
    "default_agent": "helper",
}
CALLS = 5


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Gateway:
    server: GuaritaServer
    keys: dict[str, str]
    """Secrets by key name: ``ops`` (admin), ``ana`` and ``bo``."""
    ids: dict[str, str]

    def usage(self, key: str = "ops", **params: str) -> httpx.Response:
        return httpx.get(
            self.server.base_url + "/admin/usage",
            headers=bearer(self.keys[key]),
            params=params,
            timeout=10,
        )

    def recorded(self, **params: str) -> dict[str, Any]:
        """The report once every call's record is written (they are written in batches)."""
        wait_until(
            lambda: self.usage().json()["total"]["requests"] == CALLS,
            timeout=30,
            what="the calls' records",
        )
        body: dict[str, Any] = self.usage(**params).json()
        return body

    def cli_json(self, *args: str) -> list[dict[str, Any]]:
        lines = self.server.cli("usage", "--json", *args).stdout.splitlines()
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = GuaritaServer(Path(tmp_path_factory.mktemp("usage")), CONFIG)
    keys = {"ops": server.create_key("ops", "admin")}
    keys.update((name, server.create_key(name)) for name in ("ana", "bo"))
    listed = server.cli("keys", "list", "--json").stdout.splitlines()
    ids = {key["name"]: key["id"] for key in map(json.loads, listed)}
    server.start()
    chat = {"messages": [{"role": "user", "content": "one two three"}]}
    calls = [("ana", "/v1/chat/completions", {**chat, "model": "m"})] * 3 + [
        ("bo", "/v1/chat/completions", {**chat, "model": "flaky"}),  # answered by "m"
        ("bo", "/api/chat", {"message": "four five"}),  # the default agent, on "m"
    ]
    assert len(calls) == CALLS
    for name, path, body in calls:
        reply = httpx.post(server.base_url + path, headers=bearer(keys[name]), json=body)
        assert reply.status_code == 200, reply.text
    yield Gateway(server, keys, ids)
    server.stop()


def test_usage_per_key(gateway: Gateway) -> None:
    ids = gateway.ids
    body = gateway.recorded(by="key")
    assert body["by"] == ["key"]
    rows = {row["key_id"]: row for row in body["rows"]}
    assert set(rows) == {ids["ana"], ids["bo"]}  # the admin key made no model call
    # "one two three" in, "echo: one two three" out: 3 and 4 tokens a call, at $1 and $2 per 1M
    assert rows[ids["ana"]] == {
        "key_id": ids["ana"],
        "requests": 3,
        "errors": 0,
        "input_tokens": 9,
        "output_tokens": 12,
        "cost_usd": pytest.approx(3 * (3 * 1 + 4 * 2) / 1e6),
    }
    assert rows[ids["bo"]]["requests"] == 2
    assert body["total"]["input_tokens"] == sum(row["input_tokens"] for row in body["rows"])
    assert body["truncated"] is False


def test_a_fallback_counts_for_the_model_that_answered(gateway: Gateway) -> None:
    body = gateway.recorded(key_id=gateway.ids["bo"])
    assert body["by"] == ["key", "agent", "model", "day"]
    # the call to "flaky" (no agent) was answered by its fallback "m"
    assert [(row["agent"], row["model"], row["requests"]) for row in body["rows"]] == [
        (None, "m", 1),
        ("helper", "m", 1),
    ]
    assert body["since"][:10] <= body["rows"][0]["day"] <= body["until"][:10]
    assert gateway.usage(model="flaky").json()["total"]["requests"] == 0


def test_only_admin_keys_may_look(gateway: Gateway) -> None:
    r = gateway.usage("ana")
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error"
    assert httpx.get(gateway.server.base_url + "/admin/usage").status_code == 401


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "last tuesday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"by": "key,week"}, "by"),
        ({"limit": "0"}, "query.limit"),  # FastAPI's own check, named as for any query field
    ],
)
def test_bad_parameters_are_400s_naming_them(
    gateway: Gateway, params: dict[str, str], param: str
) -> None:
    r = gateway.usage(**params)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert param in error["message"], error


def test_the_window_is_answered_in_utc(gateway: Gateway) -> None:
    body = gateway.usage(since="2026-11-01T09:00:00+03:00", until="2026-11-30").json()
    # an until date includes its day
    assert (body["since"], body["until"]) == (
        "2026-11-01T06:00:00+00:00",
        "2026-12-01T00:00:00+00:00",
    )


def test_the_cli_agrees_with_the_endpoint(gateway: Gateway) -> None:
    endpoint = gateway.recorded()
    lines = gateway.cli_json()
    assert lines[:-1] == endpoint["rows"]
    assert lines[-1] == {"total": endpoint["total"]}
    by_key = gateway.cli_json("--by", "key", "--key", gateway.ids["ana"])
    assert by_key[:-1] == gateway.usage(by="key", key_id=gateway.ids["ana"]).json()["rows"]
    table = gateway.server.cli("usage", "--by", "key").stdout
    assert gateway.ids["ana"] in table and gateway.ids["bo"] in table and "total" in table


def test_the_cli_names_the_option_it_cannot_take(gateway: Gateway) -> None:
    for args, option in [
        (("--since", "2026-13-01"), "--since"),
        (("--until", "tomorrow"), "--until"),
        (("--by", "key,week"), "--by"),
        (("--days", "0"), "--days"),
        (("--since", "2026-11-02", "--until", "2026-11-01T00:00:00Z"), "--since"),
    ]:
        result = gateway.server.cli("usage", *args, check=False)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert option in result.stderr, (args, result.stderr)
