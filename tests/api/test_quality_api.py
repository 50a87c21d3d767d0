"""Quality through the HTTP API of a real ``guarita serve``: an agent's answers scored into
the stored record, consistency trials flagged in a header, and the SmolLM2 model of the
default configuration answering a chat. Runs in both modes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import GuaritaServer, query, wait_until

DIFFERENT = [
    "The capital of France is Paris.",
    "Bananas are a good source of potassium.",
    "Quantum computers use qubits to compute.",
]


def config() -> dict[str, Any]:
    return {
        "models": {
            "answers": {"provider": "scripted", "options": {"reply": "Paris is the capital."}},
            "echoes": {"provider": "scripted"},
            "varied": {"provider": "scripted", "options": {"replies": DIFFERENT}},
        },
        "agents": {
            "good": {"model": "answers", "quality": {"scorers": ["heuristic"]}},
            "parrot": {"model": "echoes", "quality": {"scorers": ["heuristic"]}},
            "wobbly": {"model": "varied", "consistency": {"trials": 3, "threshold": 0.9}},
        },
        "default_agent": "good",
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    server = GuaritaServer(tmp_path_factory.mktemp("quality"), config())
    server.key = server.create_key("quality")  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


def chat(gateway: GuaritaServer, agent: str, message: str) -> httpx.Response:
    key = gateway.key  # type: ignore[attr-defined]
    return httpx.post(gateway.base_url + "/api/chat", headers={"authorization": f"Bearer {key}"},
                      json={"agent": agent, "message": message}, timeout=30)  # fmt: skip


def stored_quality(gateway: GuaritaServer, request_id: str) -> float:
    import asyncio

    def found() -> list[dict[str, Any]] | None:
        sql = f"SELECT quality FROM requests WHERE request_id = '{request_id}'"
        rows = asyncio.run(query(gateway.store_url, sql))
        return rows or None

    rows: list[dict[str, Any]] = wait_until(found, timeout=15, what="the stored record")
    return float(rows[0]["quality"])


def request_line(gateway: GuaritaServer, request_id: str) -> dict[str, Any] | None:
    for text in gateway.logs().splitlines():
        if request_id in text and text.startswith("{"):
            line: dict[str, Any] = json.loads(text)
            if line.get("event") == "request":
                return line
    return None


def test_scores_reach_the_answer_the_record_and_the_log_line(gateway: GuaritaServer) -> None:
    good = chat(gateway, "good", "What is the capital of France?")
    parrot = chat(gateway, "parrot", "What is the capital of France?")
    assert good.status_code == parrot.status_code == 200
    assert good.json()["quality_score"] == pytest.approx(1.0)
    echoed = parrot.json()
    assert echoed["response"].startswith("echo: ") and echoed["quality_score"] < 0.5
    assert stored_quality(gateway, good.json()["request_id"]) == pytest.approx(1.0)
    assert stored_quality(gateway, echoed["request_id"]) == pytest.approx(echoed["quality_score"])
    line = wait_until(lambda: request_line(gateway, echoed["request_id"]), timeout=10,
                      what="the request's log line")  # fmt: skip
    assert line["scores"] == {"heuristic": echoed["quality_score"]}


def test_disagreeing_trials_are_flagged(gateway: GuaritaServer) -> None:
    response = chat(gateway, "wobbly", "Tell me something.")
    assert response.status_code == 200 and response.json()["response"] in DIFFERENT
    score, flag = response.headers["x-guarita-consistency"].split("; ")
    assert float(score) < 0.9 and flag == "low"
    # one record for the request, with the three trials' tokens
    assert response.json()["usage"]["completion_tokens"] == sum(len(d.split()) for d in DIFFERENT)


@pytest.mark.model
@pytest.mark.slow
def test_smollm2_answers_a_chat_through_guarita_serve(tmp_path: Path) -> None:
    """The default configuration: the default agent is on SmolLM2-135M-Instruct, and the
    Gemma base model stays available."""
    server = GuaritaServer(tmp_path / "default", {})
    key = server.create_key("smol")
    server.start(timeout=180)
    try:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
        models = {m.id for m in client.models.list()}
        completion = client.chat.completions.create(
            model="smollm2-135m",
            messages=[
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": "What does HTTP stand for?"},
            ],
            max_tokens=32,
            temperature=0,
        )
        headers = {"authorization": f"Bearer {key}"}
        agent = httpx.post(server.base_url + "/api/chat", headers=headers,
                           json={"message": "Name a primary colour."}, timeout=120)  # fmt: skip
    finally:
        server.stop()
    assert {"smollm2-135m", "gemma3-270m"} <= models
    assert "hypertext" in (completion.choices[0].message.content or "").lower()
    assert agent.status_code == 200 and agent.json()["model"] == "smollm2-135m"
    assert agent.json()["response"].strip()
