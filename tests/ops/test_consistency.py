"""Consistency: N trials of an agent's call, their agreement on the real WordLlama
embedder, and what a low agreement does (flag, or fall back); scripted upstreams that
answer alike or differently per trial, and the real local model at two temperatures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guarita.ops.consistency import HEADER, consistency
from guarita.ops.scorers import Similarity
from guarita.runtime import Runtime
from guarita.settings import load_settings
from guarita.types import Call, Caller, FallbackLevel

DIFFERENT = [
    "The capital of France is Paris.",
    "Bananas are a good source of potassium.",
    "Quantum computers use qubits to compute.",
]


async def test_consistency_is_the_mean_pairwise_similarity() -> None:
    similarity = Similarity()
    try:
        same = await consistency(["Paris is the capital."] * 3, similarity)
        mixed = await consistency(DIFFERENT, similarity)
        one = await consistency(["alone"], similarity)
    finally:
        await similarity.aclose()
    assert same == pytest.approx(1.0, abs=1e-5) and one == 1.0
    assert mixed < 0.6


def settings(tmp_path: Path, **agents: Any) -> Any:
    return load_settings(
        data_dir=tmp_path,
        models={
            "same": {"provider": "scripted", "options": {"reply": "Paris is the capital."}},
            "varied": {"provider": "scripted", "options": {"replies": DIFFERENT}},
            "backup": {"provider": "scripted", "options": {"reply": "Ask me again later."}},
            "flaky": {
                "provider": "scripted",
                "retry": {"max_attempts": 1},
                "options": {"reply": "Paris is the capital.", "fail_every": 2},
            },
        },
        agents=agents,
        default_agent=next(iter(agents)),
        resilience={"static_reply": "Sorry, no stable answer."},
    )


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings(
        tmp_path,
        steady={"model": "same", "consistency": {"trials": 3}},
        flagged={"model": "varied", "consistency": {"trials": 3, "on_low": "flag"}},
        falls={"model": "varied", "fallbacks": ["backup"],
               "consistency": {"trials": 3, "on_low": "fallback"}},
        static={"model": "varied", "consistency": {"trials": 3, "on_low": "fallback"}},
        single={"model": "varied"},
        shaky={"model": "flaky", "consistency": {"trials": 3}},
    ))  # fmt: skip
    await runtime.start()
    yield runtime
    await runtime.aclose()


def call(agent: str, model: str, text: str = "What is the capital of France?") -> Call:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 50}
    return Call(request_id=f"c-{agent}", model=model, agent=agent, caller=Caller.anonymous(),
                body=body)  # fmt: skip


async def test_answers_that_agree_pass(runtime: Runtime) -> None:
    c = call("steady", "same")
    reply = await runtime.pipeline(c)
    assert reply.text == "Paris is the capital."
    assert c.record.consistency == pytest.approx(1.0, abs=1e-5)
    assert c.response_headers[HEADER] == "1.000"
    # three trials' tokens on the one record: charged as three calls (4 words each)
    assert c.record.output_tokens == 3 * 4
    single = call("single", "varied")
    await runtime.pipeline(single)
    assert single.record.consistency is None and HEADER not in single.response_headers


async def test_answers_that_disagree_are_flagged(runtime: Runtime) -> None:
    c = call("flagged", "varied")
    reply = await runtime.pipeline(c)
    assert reply.text in DIFFERENT and reply.fallback_level == FallbackLevel.PRIMARY
    assert c.record.consistency is not None and c.record.consistency < 0.6
    assert c.response_headers[HEADER] == f"{c.record.consistency:.3f}; low"
    metrics = runtime.metrics.render().decode()
    assert 'guarita_consistency_checks_total{agent_name="flagged",outcome="low"} 1.0' in metrics


async def test_a_low_agreement_falls_back_to_the_agents_fallback_model(runtime: Runtime) -> None:
    c = call("falls", "varied")
    reply = await runtime.pipeline(c)
    assert reply.text == "Ask me again later."
    assert reply.fallback_level == FallbackLevel.MODEL and reply.served_by == "backup"
    assert c.response_headers[HEADER].endswith("; low; fallback")


async def test_without_a_fallback_model_the_static_reply_answers(runtime: Runtime) -> None:
    c = call("static", "varied")
    reply = await runtime.pipeline(c)
    assert reply.text == "Sorry, no stable answer."
    assert reply.fallback_level == FallbackLevel.STATIC and reply.quality == pytest.approx(0.1)


async def test_a_failed_trial_is_left_out(runtime: Runtime) -> None:
    """Every second call of ``flaky`` fails: of the three trials one is answered by the
    static reply, and the two model answers left are compared."""
    c = call("shaky", "flaky")
    reply = await runtime.pipeline(c)
    assert reply.text == "Paris is the capital."
    assert c.record.consistency == pytest.approx(1.0, abs=1e-5)
    assert c.record.output_tokens == 2 * 4  # the static reply costs no tokens


@pytest.mark.model
@pytest.mark.slow
async def test_the_real_local_model_agrees_with_itself_at_temperature_zero(
    tmp_path: Path,
) -> None:
    # reusing the evaluated prefix of the previous call changes greedy answers a little:
    # the trials are compared with every prompt evaluated afresh
    smol = {"provider": "llamacpp", "context_window": 2048,
            "options": {"packaged": "smollm2", "prompt_cache": False}}  # fmt: skip
    s = load_settings(
        data_dir=tmp_path,
        models={"smol": smol},
        agents={
            "cold": {"model": "smol", "consistency": {"trials": 3, "threshold": 0.9}},
            "hot": {"model": "smol", "consistency": {"trials": 3, "threshold": 0.9}},
        },
        default_agent="cold",
    )  # fmt: skip
    runtime = Runtime(s)
    await runtime.start()
    try:
        cold = call("cold", "smol", "Write one sentence about the sea.")
        cold.body["temperature"] = 0.0  # what the agent service sends for the agent
        await runtime.pipeline(cold)
        hot = call("hot", "smol", "Write one sentence about the sea.")
        hot.body["temperature"] = 2.0
        await runtime.pipeline(hot)
    finally:
        await runtime.aclose()
    assert cold.record.consistency == pytest.approx(1.0, abs=1e-4)
    assert hot.record.consistency is not None and hot.record.consistency < cold.record.consistency
