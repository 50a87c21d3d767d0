"""Quality scorers: the heuristic's penalties, similarity on the real WordLlama embedder,
an LLM judge through the runtime's pipeline (a scripted upstream and the real local model),
and the scores reaching the record and ``quality.min_score``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guarita.ops.scorers import (
    PENALTIES,
    HeuristicScorer,
    ScoreInput,
    Scoring,
    Similarity,
    SimilarityScorer,
    combine,
    is_echo,
    parse_rating,
)
from guarita.runtime import Runtime
from guarita.settings import load_settings
from guarita.types import Call, Caller, FallbackLevel, RequestContext
from tests.helpers import query

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def item(answer: str, **extra: Any) -> ScoreInput:
    return ScoreInput(messages=extra.pop("messages", ASK), answer=answer, **extra)


@pytest.mark.parametrize(
    ("answer", "extra", "expected"),
    [
        ("The capital of France is Paris.", {}, 1.0),
        ("   ", {}, 0.0),
        ("I'm sorry, I cannot help with that.", {}, 1.0 - PENALTIES["refusal"]),
        ("What is the capital of France?", {}, 1.0 - PENALTIES["echo"]),
        ("The capital of France is", {"finish_reason": "length"}, 1.0 - PENALTIES["truncated"]),
        ('{"capital": "Paris"}', {"wants_json": True}, 1.0),
        ("capital: Paris", {"wants_json": True}, 1.0 - PENALTIES["invalid_json"]),
        ("I can't. What is the capital of France?", {"finish_reason": "length"}, 0.0),
    ],
)
async def test_heuristic_penalties(answer: str, extra: dict[str, Any], expected: float) -> None:
    scorer = HeuristicScorer()
    assert await scorer.score(item(answer, **extra)) == pytest.approx(expected)


def test_an_answer_that_repeats_the_system_and_user_prompt_is_an_echo() -> None:
    """What the base Gemma model does: the prompt back, with a stray token."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        *ASK,
    ]
    answer = "You are a helpful assistant. Answer briefly.\n\nWhat is the capital of France? hm"
    assert is_echo(answer, messages)
    assert not is_echo("The capital of France is Paris, on the Seine.", messages)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8", 0.8), ("8/10", 0.8), ("Score: 7 out of 10", 0.7), ("0.9", 0.9), ("10", 1.0),
     ("3.5", 0.35), ("great answer", None), ("42", None), ("11/10", None)],
)  # fmt: skip
def test_parse_rating(text: str, expected: float | None) -> None:
    assert parse_rating(text) == (pytest.approx(expected) if expected is not None else None)


def test_combine_is_a_weighted_mean_of_what_could_score() -> None:
    assert combine({"a": 1.0, "b": 0.5}, None) == pytest.approx(0.75)
    assert combine({"a": 1.0, "b": 0.5, "c": None}, {"a": 3.0}) == pytest.approx(0.875)
    assert combine({"c": None}, None) is None


async def test_similarity_on_wordllama_ranks_a_paraphrase_above_an_unrelated_answer() -> None:
    similarity = Similarity()
    try:
        paraphrase = await similarity(
            "The capital of France is Paris.", "Paris is the capital city of France."
        )
        unrelated = await similarity(
            "The capital of France is Paris.", "Bananas are a good source of potassium."
        )
        scorer = SimilarityScorer("ref", similarity)
        no_reference = await scorer.score(item("Paris."))
        scored = await scorer.score(item("Paris is France's capital.", reference="Paris."))
    finally:
        await similarity.aclose()
    assert paraphrase > 0.8 and unrelated < 0.5 and paraphrase > unrelated + 0.3
    assert no_reference is None and scored is not None and 0 < scored <= 1


def judged_settings(tmp_path: Path, store_url: str, judge_reply: str) -> Any:
    return load_settings(
        data_dir=tmp_path,
        store={"url": store_url},
        models={
            "chat": {"provider": "scripted", "options": {"reply": "Paris is the capital."}},
            "judge": {"provider": "scripted", "options": {"reply": judge_reply}},
            "echoing": {"provider": "scripted", "quality": {"min_score": 0.5}},
        },
        quality={"scorers": {"heuristic": {"kind": "heuristic"},
                             "judge": {"kind": "judge", "model": "judge"}}},
        agents={
            "judged": {"model": "chat", "quality": {"scorers": ["heuristic", "judge"],
                                                     "weights": {"judge": 3}}},
            "plain": {"model": "chat"},
            "checked": {"model": "echoing", "fallbacks": ["chat"],
                        "quality": {"scorers": ["heuristic"]}},
        },
        default_agent="plain",
    )  # fmt: skip


@pytest.fixture
async def judged(tmp_path: Path, store_url: str) -> AsyncIterator[Runtime]:
    runtime = Runtime(judged_settings(tmp_path, store_url, "8/10"))
    await runtime.start()
    yield runtime
    await runtime.aclose()


def chat_call(request_id: str, agent: str, model: str, text: str) -> Call:
    return Call(
        request_id=request_id,
        model=model,
        agent=agent,
        caller=Caller.anonymous(),
        body={"messages": [{"role": "user", "content": text}]},
        context=RequestContext(request_id),
    )


async def test_a_judge_on_a_scripted_upstream_is_an_internal_call(
    judged: Runtime, store_url: str
) -> None:
    combined, per = await judged.scoring.score("judged", item("Paris is the capital."))
    assert per == {"heuristic": 1.0, "judge": 0.8}
    assert combined == pytest.approx((1.0 + 3 * 0.8) / 4)
    assert await judged.scoring.score("plain", item("Paris.")) == (None, {})
    await judged.records.flush()
    rows = await query(store_url, "SELECT * FROM requests WHERE endpoint = 'quality.judge'")
    assert len(rows) == 1 and rows[0]["key_id"] is None and rows[0]["model"] == "judge"


async def test_an_unparseable_judge_scores_nothing(tmp_path: Path, store_url: str) -> None:
    runtime = Runtime(judged_settings(tmp_path, store_url, "a fine answer"))
    await runtime.start()
    try:
        combined, per = await runtime.scoring.score("judged", item("Paris is the capital."))
    finally:
        await runtime.aclose()
    assert per == {"heuristic": 1.0} and combined == pytest.approx(1.0)


async def test_a_live_answer_is_scored_into_its_record_without_the_judge(
    judged: Runtime, store_url: str
) -> None:
    call = chat_call("scored", "judged", "chat", "What is the capital of France?")
    reply = await judged.pipeline(call)
    assert reply.quality == pytest.approx(1.0)
    assert call.record.scores == {"heuristic": 1.0}  # the judge is not on the live path
    await judged.records.flush()
    rows = await query(store_url, "SELECT quality FROM requests WHERE request_id = 'scored'")
    assert rows == [{"quality": pytest.approx(1.0)}]
    assert call.context is not None and call.context.log_fields()["scores"] == {"heuristic": 1.0}
    plain = chat_call("unscored", "plain", "chat", "hello")
    await judged.pipeline(plain)
    assert plain.record.scores is None
    metrics = judged.metrics.render().decode()
    assert 'guarita_answer_quality_count{agent_name="judged"' in metrics
    assert 'guarita_answer_quality_count{agent_name="plain"' not in metrics


async def test_min_score_uses_the_heuristic_and_falls_back(judged: Runtime, store_url: str) -> None:
    """The ``echoing`` model echoes the question back: the heuristic scores it under its
    ``quality.min_score``, so the agent's fallback model answers."""
    call = chat_call("echoed", "checked", "echoing", "What is the capital of France?")
    reply = await judged.pipeline(call)
    assert reply.text == "Paris is the capital."
    assert reply.fallback_level == FallbackLevel.MODEL and reply.served_by == "chat"
    metrics = judged.metrics.render().decode()
    assert 'reason="low_score"' in metrics


@pytest.mark.model
@pytest.mark.slow
async def test_a_judge_on_the_real_local_model(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        models={
            "smol": {"provider": "llamacpp", "context_window": 2048,
                     "options": {"packaged": "smollm2"}},
        },
        quality={"scorers": {"judge": {"kind": "judge", "model": "smol", "max_tokens": 6}}},
        agents={"judged": {"model": "smol", "quality": {"scorers": ["judge"]}}},
        default_agent="judged",
    )  # fmt: skip
    runtime = Runtime(settings)
    await runtime.start()
    try:
        scoring: Scoring = runtime.scoring
        judge = scoring._scorers["judge"]
        call = judge.judge_call(item("The capital of France is Paris."))  # type: ignore[attr-defined]
        reply = await runtime.pipeline(call)
        combined, per = await scoring.score("judged", item("The capital of France is Paris."))
    finally:
        await runtime.aclose()
    assert reply.text.strip()  # the model answered the rubric
    expected = parse_rating(reply.text)
    assert per.get("judge") == expected and combined == expected
    assert combined is None or 0.0 <= combined <= 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"agents": {"a": {"model": "m", "quality": {"scorers": ["nope"]}}}},
         "agents.a.quality.scorers: unknown scorer 'nope'"),
        ({"quality": {"scorers": {"j": {"kind": "judge"}}}}, "a judge scorer names its model"),
        ({"quality": {"scorers": {"j": {"kind": "judge", "model": "gone"}}}},
         "quality.scorers.j.model: unknown model 'gone'"),
        ({"agents": {"a": {"model": "m", "quality": {"scorers": ["heuristic"],
                                                     "weights": {"other": 1}}}}},
         "weights.other: not one of this agent's scorers"),
    ],
)  # fmt: skip
def test_quality_settings_refuse_what_does_not_resolve(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    from guarita.errors import ConfigError

    base: dict[str, Any] = {"models": {"m": {"provider": "scripted"}},
                            "agents": {"a": {"model": "m"}}, "default_agent": "a"}  # fmt: skip
    with pytest.raises(ConfigError) as failed:
        load_settings(data_dir=tmp_path, **{**base, **overrides})
    assert message in str(failed.value)
