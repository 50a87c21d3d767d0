"""Complexity routing through a real server: an agent with ``routing`` answers with the
level and the model it chose, and the request record holds the routed model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import GuaritaServer, query, wait_until

SCRIPTED = {"provider": "scripted", "options": {"reply": "ok"}}
CONFIG = {
    "models": {"small": SCRIPTED, "mid": SCRIPTED, "big": SCRIPTED},
    "agents": {
        "tiered": {
            "model": "mid",
            "routing": {"mode": "complexity", "simple": "small", "medium": "mid", "complex": "big"},
        },
        "plain": {"model": "mid"},
    },
    "default_agent": "tiered",
}
HARD = (
    "Explain step by step why this is O(n^2) and compare it with a set-based version:\n"
    "```python\nfor a in xs:\n    for b in xs:\n        if a == b: return True\n```"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    gateway = GuaritaServer(tmp_path_factory.mktemp("routing"), CONFIG)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def headers(server: GuaritaServer) -> dict[str, str]:
    return {"authorization": f"Bearer {server.create_key()}"}


def recorded_model(server: GuaritaServer, request_id: str) -> tuple[str, str]:
    sql = "SELECT agent, model FROM requests WHERE request_id = :r"
    found: list[dict[str, str]] = []

    def stored() -> bool:
        found[:] = asyncio.run(query(server.store_url, sql, r=request_id))
        return bool(found)

    wait_until(stored, timeout=20, what=f"the record of {request_id}")
    return found[0]["agent"], found[0]["model"]


@pytest.mark.parametrize(
    ("text", "level", "model"), [("Hi!", "simple", "small"), (HARD, "complex", "big")]
)
def test_an_agent_with_routing_answers_with_the_route_and_records_the_model(
    server: GuaritaServer, headers: dict[str, str], text: str, level: str, model: str
) -> None:
    request_id = f"route-{level}"
    answer = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={**headers, "x-request-id": request_id},
        json={"model": "tiered", "messages": [{"role": "user", "content": text}]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-guarita-route"] == level
    assert answer.headers["x-guarita-routed-model"] == model
    assert recorded_model(server, request_id) == ("tiered", model)


def test_the_agent_api_routes_too(server: GuaritaServer, headers: dict[str, str]) -> None:
    answer = httpx.post(server.base_url + "/api/chat", headers=headers,
                        json={"message": HARD, "agent": "tiered"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-guarita-route"] == "complex"
    assert answer.json()["model"] == "big"


def test_agents_without_routing_answer_without_the_headers(
    server: GuaritaServer, headers: dict[str, str]
) -> None:
    body = {"model": "plain", "messages": [{"role": "user", "content": HARD}]}
    answer = httpx.post(server.base_url + "/v1/chat/completions", headers=headers, json=body)
    assert answer.status_code == 200
    assert "x-guarita-route" not in answer.headers
    assert "x-guarita-routed-model" not in answer.headers
