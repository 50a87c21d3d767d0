"""Behaviour metrics: each chat answer's length, refusal and confidence, in the record and
in Prometheus per agent, model and prompt version; quality and consistency when scored."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guarita.pipeline.behaviour import confidence_of
from guarita.runtime import Runtime
from guarita.settings import load_settings
from guarita.types import Call, Caller, Completion, Reply, Usage


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    s = load_settings(
        data_dir=tmp_path,
        models={
            "sorry": {"provider": "scripted", "options": {"reply": "I'm sorry, I cannot help."}},
            "fine": {"provider": "scripted", "options": {"reply": "Paris is the capital."}},
        },
        quality={"scorers": {"heuristic": {"kind": "heuristic"}}},
        agents={"scored": {"model": "sorry", "quality": {"scorers": ["heuristic"]},
                           "consistency": {"trials": 2}},
                "plain": {"model": "fine"}},
        default_agent="plain",
    )  # fmt: skip
    runtime = Runtime(s)
    await runtime.start()
    yield runtime
    await runtime.aclose()


def call(agent: str, model: str) -> Call:
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    return Call(request_id=f"b-{agent}", model=model, agent=agent, caller=Caller.anonymous(),
                body=body)  # fmt: skip


def sample(runtime: Runtime, name: str, **labels: str) -> float | None:
    value = runtime.metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


async def test_a_refusal_is_recorded_and_counted_with_its_quality(runtime: Runtime) -> None:
    c = call("scored", "sorry")
    await runtime.pipeline(c)
    labels = {"agent_name": "scored", "model": "sorry", "prompt_version": ""}
    assert c.record.refusal is True and c.record.answer_chars == len("I'm sorry, I cannot help.")
    assert c.record.confidence is None  # the scripted provider gives no logprobs
    assert sample(runtime, "guarita_answer_refusals_total", **labels) == 1
    assert sample(runtime, "guarita_answer_length_chars_sum", **labels) == c.record.answer_chars
    assert sample(runtime, "guarita_answer_quality_count", **labels) == 1
    assert sample(runtime, "guarita_answer_quality_sum", **labels) == pytest.approx(0.4)
    assert sample(runtime, "guarita_answer_consistency_count", **labels) == 1
    row = c.record.row()
    assert row["refusal"] is True and row["answer_chars"] == c.record.answer_chars


async def test_a_plain_answer_is_no_refusal_and_unscored(runtime: Runtime) -> None:
    c = call("plain", "fine")
    await runtime.pipeline(c)
    labels = {"agent_name": "plain", "model": "fine", "prompt_version": ""}
    assert c.record.refusal is False
    assert sample(runtime, "guarita_answer_refusals_total", **labels) is None
    assert sample(runtime, "guarita_answer_length_chars_count", **labels) == 1
    assert sample(runtime, "guarita_answer_quality_count", **labels) is None


def test_confidence_is_the_geometric_mean_token_probability() -> None:
    logprobs = [{"token": "a", "logprob": math.log(0.5)}, {"token": "b", "logprob": math.log(0.2)}]
    body = {"choices": [{"message": {"content": "ab"}, "logprobs": {"content": logprobs}}]}
    reply = Reply.complete("x", Completion(body=body, usage=Usage(), model="m"))
    assert confidence_of(reply) == pytest.approx(math.sqrt(0.5 * 0.2), abs=1e-6)
    body["choices"][0]["logprobs"] = None
    assert (
        confidence_of(Reply.complete("x", Completion(body=body, usage=Usage(), model="m"))) is None
    )
    measured = Completion(body=body, usage=Usage(), model="m", confidence=0.7)
    assert confidence_of(Reply.complete("x", measured)) == 0.7
