"""Complexity routing: the scorer's levels and features, its determinism, the stage's
headers and log fields, and the routed model's price and record through a real Runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guarita.errors import BudgetExceeded, ConfigError
from guarita.runtime import Runtime
from guarita.settings import RoutingSettings, load_settings
from guarita.traffic.complexity import ComplexityRouting, score
from guarita.types import Call, Caller, Completion, Reply, Usage
from tests.helpers import query

SYSTEM = {"role": "system", "content": "You answer support questions for Acme. Be brief."}
COMPLEX_PROMPT = """Explain step by step why this function is slow, prove its complexity is
O(n^2), and compare it with a version that uses a set. Which trade-offs does each have?

```python
def has_duplicates(items):
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if a == b:
                return True
    return False
```"""


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_greeting_is_simple() -> None:
    result = score([SYSTEM, user("Hi there!")])
    assert result.level == "simple"
    assert result.score < 1


def test_a_multi_step_reasoning_question_with_code_is_complex() -> None:
    result = score([SYSTEM, user(COMPLEX_PROMPT)])
    assert result.level == "complex"
    assert any(r.startswith("code block") for r in result.reasons)
    assert any("step by step" in r and "prove" in r for r in result.reasons)
    assert "math +1.5" in result.reasons


def test_a_comparison_question_is_medium() -> None:
    text = "What's the difference between the Pro and Team plans? Which one should I pick?"
    result = score([SYSTEM, user(text)])
    assert result.level == "medium", result


@pytest.mark.parametrize(
    ("text", "feature"),
    [
        ("def f(x):\n    if x == 3:\n        return x;\n", "3+ code lines"),
        ("The command `make build` fails", "inline code"),
        ("What is the derivative of x^3?", "math"),
        ("Where is it? When does it ship? Can I change it?", "3 questions"),
        ("word " * 400, "length 500 tokens"),
    ],
)
def test_each_feature_gives_points(text: str, feature: str) -> None:
    result = score([user(text)])
    assert any(r.startswith(feature) for r in result.reasons), result.reasons
    assert result.score > 0


def test_conversation_depth_counts_but_a_thanks_stays_simple() -> None:
    history: list[dict[str, Any]] = []
    for i in range(12):
        history += [user(f"question {i}"), {"role": "assistant", "content": f"answer {i}"}]
    result = score([SYSTEM, *history, user("Thanks!")])
    assert "depth 12 exchanges +1" in result.reasons
    assert result.level == "simple"


def test_the_system_prompt_is_not_scored() -> None:
    wordy = {"role": "system", "content": COMPLEX_PROMPT}
    assert score([wordy, user("Hi")]) == score([user("Hi")])


def test_only_the_latest_user_message_is_read_for_cues() -> None:
    earlier = [user(COMPLEX_PROMPT), {"role": "assistant", "content": "Here is why..."}]
    assert score([*earlier, user("Thanks, that helps.")]).level == "simple"


def test_cues_at_the_end_of_a_very_long_message_count() -> None:
    text = "lorem ipsum " * 5000 + "\nWhy does it fail? Explain step by step."
    result = score([user(text)])
    assert any("step by step" in r for r in result.reasons)
    assert result.level == "complex"


def test_thresholds_are_parameters() -> None:
    messages = [user("Why was I charged twice?")]
    assert score(messages).level == "simple"
    assert score(messages, medium_at=0.5, complex_at=1.0).level == "complex"


def test_the_score_is_deterministic_across_processes() -> None:
    """Same prompt, same score and reasons, whatever the hash seed of the process."""
    program = (
        "from guarita.traffic.complexity import score\n"
        f"print(score([{{'role': 'user', 'content': {COMPLEX_PROMPT!r}}}]))"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                              text=True, check=True, timeout=60)  # fmt: skip
        outputs.add(done.stdout)
    assert len(outputs) == 1
    assert repr(score([user(COMPLEX_PROMPT)])) + "\n" in outputs


# -- the stage --------------------------------------------------------------------------

ROUTING = RoutingSettings(simple="small", medium="mid", complex="big")


def chat_call(text: str, *, agent: str | None = "tiered", model: str = "mid") -> Call:
    return Call(request_id="r", model=model, body={"messages": [SYSTEM, user(text)]},
                caller=Caller.anonymous(), agent=agent)  # fmt: skip


async def test_the_stage_routes_and_reports() -> None:
    seen: list[str] = []

    async def provider(call: Call) -> Reply:
        seen.append(call.model)
        return Reply.complete("p", Completion(body={}, usage=Usage(1, 1), model=call.model))

    stage = ComplexityRouting({"tiered": ROUTING})
    for text, level, model in (("Hi!", "simple", "small"), (COMPLEX_PROMPT, "complex", "big")):
        call = chat_call(text)
        await stage(call, provider)
        assert call.model == model and seen[-1] == model
        assert call.response_headers == {"x-guarita-route": level,
                                         "x-guarita-routed-model": model}  # fmt: skip
        assert call.record.route == level
        assert call.record.complexity == score(call.messages).score


async def test_calls_without_routing_are_untouched() -> None:
    async def provider(call: Call) -> Reply:
        return Reply.complete("p", Completion(body={}, usage=Usage(), model=call.model))

    stage = ComplexityRouting({"tiered": ROUTING})
    other_agent, direct = chat_call(COMPLEX_PROMPT, agent="plain"), chat_call("x", agent=None)
    embeddings = Call(request_id="e", model="mid", body={"input": ["x"]}, agent="tiered",
                      caller=Caller.anonymous(), operation="embeddings")  # fmt: skip
    for call in (other_agent, direct, embeddings):
        await stage(call, provider)
        assert call.model == "mid"
        assert call.response_headers == {} and call.record.route is None


def test_routing_settings_name_the_unknown_model() -> None:
    def settings(**routing: Any) -> None:
        load_settings(models={"m": {"provider": "scripted"}},
                      agents={"tiered": {"model": "m", "routing": routing}},
                      default_agent="tiered")  # fmt: skip

    named = r"agents\.tiered\.routing\.complex: unknown model 'huge'"
    with pytest.raises(ConfigError, match=named):
        settings(simple="m", medium="m", complex="huge")
    with pytest.raises(ConfigError, match=r"agents\.tiered\.routing: .*complex_at must be above"):
        settings(simple="m", medium="m", complex="m", medium_at=3, complex_at=2)


def tiered_settings(tmp_path: Path, **extra: Any) -> Any:
    priced = {"provider": "scripted", "options": {"reply": "ok"}}
    return load_settings(
        data_dir=tmp_path,
        models={
            "small": {**priced, "price_input_per_1m": 0, "price_output_per_1m": 0},
            "mid": {**priced, "price_input_per_1m": 1, "price_output_per_1m": 1},
            "big": {**priced, "price_input_per_1m": 1000, "price_output_per_1m": 1000},
        },
        agents={"tiered": {"model": "mid", "routing": ROUTING.model_dump()}},
        default_agent="tiered",
        **extra,
    )


async def test_the_routed_model_is_priced_and_recorded(tmp_path: Path) -> None:
    """Through a real Runtime: Accounting prices the routed model, and the record and the
    token metric name it."""
    settings = tiered_settings(tmp_path)
    runtime = Runtime(settings)
    await runtime.start()
    try:
        cheap = await runtime.pipeline(chat_call("Hi!"))
        costly = await runtime.pipeline(chat_call(COMPLEX_PROMPT))
    finally:
        await runtime.aclose()
    assert cheap.served_by == "small" and cheap.cost_usd == 0
    assert costly.served_by == "big"
    assert costly.cost_usd == pytest.approx(costly.usage.total_tokens * 1000 / 1e6)
    tokens = runtime.metrics.registry.get_sample_value(
        "agent_tokens_used_total", {"agent_name": "tiered", "model": "big"}
    )
    assert tokens == costly.usage.total_tokens
    rows = await query(settings.store_url, "SELECT agent, model FROM requests ORDER BY id")
    assert rows == [{"agent": "tiered", "model": "small"}, {"agent": "tiered", "model": "big"}]


async def test_limits_reserve_the_routed_models_price(tmp_path: Path) -> None:
    """A total budget of $0.10: a simple prompt (free model) passes, a complex one, whose
    model could cost $0.30 for its 256 tokens of room, is refused before it is sent."""
    settings = tiered_settings(tmp_path, limits={"budgets": {"total": {"daily_usd": 0.1}}})
    runtime = Runtime(settings)
    await runtime.start()
    try:
        assert (await runtime.pipeline(chat_call("Hi!"))).served_by == "small"
        with pytest.raises(BudgetExceeded):
            await runtime.pipeline(chat_call(COMPLEX_PROMPT))
    finally:
        await runtime.aclose()
