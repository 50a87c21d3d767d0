"""The fallback chain, level by level, through the HTTP app around an in-process runtime:
primary → another deployment → a fallback model → rules → static; quality checks that send
an answer to the next level; context-window errors; deadlines; streams that break."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from guarita.errors import QualityRejected
from guarita.resilience.breaker import CLOSED, OPEN, BreakerState, SharedBreakerStore
from guarita.runtime import Runtime
from guarita.state.memory import MemorySharedState
from guarita.telemetry.metrics import Metrics
from guarita.types import Call
from tests.helpers import FakeUpstream
from tests.resilience.support import (
    call,
    control,
    groups,
    openai_model,
    sample,
    serve,
    settings,
    upstream_calls,
)

ONCE = {"max_attempts": 1}
FAILING: dict[str, Any] = {"provider": "scripted", "options": {"fail_every": 1}, "retry": ONCE}
RULES = [{"pattern": r"\brefund", "reply": "Refunds: see https://shop.example/refunds"}]
STATIC = "The service is busy, please try again."
USER = "hello there"


def scripted(reply: str, **extra: Any) -> dict[str, Any]:
    options = {"reply": reply, **extra.pop("options", {})}
    return {"provider": "scripted", "options": options, **extra}


def chat(text: str = USER, model: str = "healthy", **body: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **body}


def content(response: httpx.Response) -> str:
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def fallback_answers(metrics: Metrics, level: str) -> float:
    total = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "guarita_fallback_answers_total" and s.labels.get("level") == level:
                total += s.value
    return total


def sse_events(body: str) -> list[str]:
    return [part.removeprefix("data: ") for part in body.strip().split("\n\n") if part]


CHAIN_MODELS: dict[str, Any] = {
    "healthy": scripted("all good"),
    "split": {
        "provider": "scripted",
        "balancing": "weighted",
        "retry": ONCE,
        "deployments": [
            # weighted: the failing one is (all but surely) tried first
            {
                "name": "split-bad",
                "provider": "scripted",
                "weight": 1e6,
                "options": {"fail_every": 1},
            },
            {"name": "split-good", "provider": "scripted", "options": {"reply": "second"}},
        ],
    },
    "broken": {**FAILING, "fallbacks": ["cheap"]},
    "cheap": scripted("cheap answer"),
    "hopeless": {**FAILING, "fallbacks": ["also-broken"]},
    "also-broken": FAILING,
}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    config = settings(
        tmp_path,
        CHAIN_MODELS,
        agents={
            "a": {"model": "healthy"},
            "helper": {"model": "broken"},
            "desk": {"model": "hopeless"},
        },
        resilience={"rules": RULES, "static_reply": STATIC},
    )
    runtime = Runtime(config)
    async with serve(runtime) as client:
        yield client, runtime


async def test_the_chain_level_by_level(gateway: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = gateway
    cases = [  # (model, message, level, answer)
        ("healthy", USER, "primary", "all good"),
        ("split", USER, "deployment", "second"),
        ("broken", USER, "model", "cheap answer"),
        ("hopeless", "I want a refund now", "rules", RULES[0]["reply"]),
        ("hopeless", USER, "static", STATIC),
    ]
    qualities = []
    for model, text, level, answer in cases:
        response = await client.post("/v1/chat/completions", json=chat(text, model))
        assert response.status_code == 200, response.text
        assert response.headers["x-guarita-fallback-level"] == level, model
        assert content(response) == answer
        qualities.append(float(response.headers["x-guarita-quality"]))
        assert fallback_answers(runtime.metrics, level) == 1
    assert qualities == sorted(qualities, reverse=True)
    assert len(set(qualities)) == len(qualities)  # each level strictly below the one before
    assert qualities[0] == 1.0 and qualities[-1] < 0.5


async def test_without_rules_or_static_the_error_is_returned(tmp_path: Path) -> None:
    runtime = Runtime(settings(tmp_path, CHAIN_MODELS))
    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="hopeless"))
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error" and "scripted failure" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_agent_chat_reports_level_and_quality(
    gateway: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = gateway
    scores = {}
    for agent, level in [("a", "primary"), ("helper", "model"), ("desk", "static")]:
        response = await client.post("/api/chat", json={"agent": agent, "message": USER})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["fallback_level"] == level, agent
        scores[level] = body["quality_score"]
    assert scores["primary"] > scores["model"] > scores["static"]


async def test_agent_fallbacks_override_the_models(tmp_path: Path) -> None:
    models = {**CHAIN_MODELS, "premium": scripted("premium answer")}
    config = settings(tmp_path, models, agents={"a": {"model": "broken", "fallbacks": ["premium"]}})
    async with serve(Runtime(config)) as client:
        via_agent = await client.post("/v1/chat/completions", json=chat(model="a"))
        direct = await client.post("/v1/chat/completions", json=chat(model="broken"))
    assert content(via_agent) == "premium answer"
    assert content(direct) == "cheap answer"


# -- Quality ----------------------------------------------------------------------------


async def test_an_empty_answer_goes_to_the_next_level(tmp_path: Path) -> None:
    models = {"empty": scripted("", retry=ONCE, fallbacks=["cheap"]), "cheap": scripted("cheap")}
    runtime = Runtime(settings(tmp_path, models))
    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="empty"))
        assert response.headers["x-guarita-fallback-level"] == "model"
        assert content(response) == "cheap"
        assert (
            sample(
                runtime.metrics,
                "guarita_quality_failures_total",
                deployment="empty",
                reason="empty",
            )
            == 1
        )


async def test_chaos_garbage_is_caught_by_the_quality_check(tmp_path: Path) -> None:
    models = {
        "garbled": scripted(
            "fine", retry=ONCE, fallbacks=["cheap"], chaos={"garbage_rate": 1.0, "seed": 1}
        ),
        "cheap": scripted("cheap"),
    }
    runtime = Runtime(settings(tmp_path, models))
    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="garbled"))
        assert response.headers["x-guarita-fallback-level"] == "model"
        assert (
            sample(
                runtime.metrics,
                "guarita_quality_failures_total",
                deployment="garbled",
                reason="empty",
            )
            == 1
        )


async def test_invalid_json_is_rejected_only_when_json_was_asked(tmp_path: Path) -> None:
    models = {
        "prose": scripted("Sure! Here it is: {ok}", retry=ONCE, fallbacks=["jsonish"]),
        "jsonish": scripted('{"ok": true}'),
    }
    runtime = Runtime(settings(tmp_path, models))
    async with serve(runtime) as client:
        plain = await client.post("/v1/chat/completions", json=chat(model="prose"))
        asked = await client.post(
            "/v1/chat/completions",
            json=chat(model="prose", response_format={"type": "json_object"}),
        )
    assert plain.headers["x-guarita-fallback-level"] == "primary"
    assert content(plain).startswith("Sure!")
    assert asked.headers["x-guarita-fallback-level"] == "model"
    assert orjson.loads(content(asked)) == {"ok": True}
    assert (
        sample(
            runtime.metrics,
            "guarita_quality_failures_total",
            deployment="prose",
            reason="invalid_json",
        )
        == 1
    )


async def test_refusals_are_rejected_when_configured(tmp_path: Path) -> None:
    models = {
        "shy": scripted(
            "I'm sorry, I can't help with that.",
            retry=ONCE,
            fallbacks=["cheap"],
            quality={"reject_refusals": True},
        ),
        "cheap": scripted("cheap"),
    }
    async with serve(Runtime(settings(tmp_path, models))) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="shy"))
    assert response.headers["x-guarita-fallback-level"] == "model"


async def test_a_low_score_from_a_pluggable_scorer_is_rejected(tmp_path: Path) -> None:
    def scorer(_call: Call, text: str) -> float:
        return 0.1 if "meh" in text else 0.9

    models = {
        "meh": scripted("meh, whatever", retry=ONCE, quality={"min_score": 0.5}),
        "fine": scripted("a fine answer", quality={"min_score": 0.5}),
    }
    async with groups(settings(tmp_path, models), scorer=scorer) as (built, metrics):
        with pytest.raises(QualityRejected, match="low_score"):
            await built["meh"](call("meh"))
        assert (await built["fine"](call("fine"))).text == "a fine answer"
    assert sample(metrics, "guarita_quality_failures_total", deployment="meh",
                  reason="low_score") == 1  # fmt: skip
    assert sample(metrics, "guarita_quality_failures_total", deployment="fine",
                  reason="low_score") == 0  # fmt: skip


async def test_a_slow_answer_is_returned_but_counts_against_the_breaker(tmp_path: Path) -> None:
    models = {
        "slowpoke": scripted(
            "late but fine",
            options={"delay_s": 0.05},
            fallbacks=["cheap"],
            quality={"max_latency_ms": 1},
            breaker={"failure_threshold": 2},
        ),
        "cheap": scripted("cheap"),
    }
    runtime = Runtime(settings(tmp_path, models))
    async with serve(runtime) as client:
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=chat(model="slowpoke"))
            assert response.status_code == 200
            assert response.headers["x-guarita-fallback-level"] == "primary"
            assert content(response) == "late but fine"
        assert (
            sample(
                runtime.metrics,
                "guarita_quality_failures_total",
                deployment="slowpoke",
                reason="slow",
            )
            == 2
        )
        assert (await runtime.breakers.snapshot(["slowpoke"]))["slowpoke"].state == OPEN
        assert sample(runtime.metrics, "guarita_circuit_state", deployment="slowpoke") == 2
        assert (
            sample(
                runtime.metrics,
                "guarita_circuit_transitions_total",
                deployment="slowpoke",
                from_state="closed",
                to_state="open",
            )
            == 1
        )
        # open: the slow model is no longer called, the fallback answers
        response = await client.post("/v1/chat/completions", json=chat(model="slowpoke"))
        assert response.headers["x-guarita-fallback-level"] == "model"
    assert runtime.models["slowpoke"].primary.provider.calls == 2  # type: ignore[attr-defined]


# -- Context windows (the fake OpenAI upstream, over HTTP) ------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = FakeUpstream("openai_upstream", tmp_path_factory.mktemp("fallback-upstream")).start()
    yield fake
    fake.stop()


async def test_a_context_error_goes_straight_to_a_larger_window(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    await control(upstream, reset=True)
    models = {
        "small": openai_model(
            upstream,
            "fail-context",
            context_window=8192,
            fallbacks=["same-size", "big"],
            retry={"max_attempts": 3},
        ),
        "same-size": scripted("same window", context_window=8192),
        "big": scripted("big window", context_window=128_000),
    }
    runtime = Runtime(settings(tmp_path, models))
    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="small"))
        assert response.status_code == 200, response.text
        assert response.headers["x-guarita-fallback-level"] == "model"
        assert content(response) == "big window"
        assert sample(runtime.metrics, "guarita_retries_total", deployment="small") == 0
        breaker = runtime.models["small"].primary.breaker
        assert breaker is not None and await breaker.state() == "closed"
    assert await upstream_calls(upstream) == 1  # no retry
    assert runtime.models["same-size"].primary.provider.calls == 0  # type: ignore[attr-defined]


async def test_another_400_is_the_callers_and_is_not_fallen_back(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    await control(upstream, reset=True)
    models = {
        "strict": openai_model(upstream, "fail-400", fallbacks=["big"]),
        "big": scripted("big window", context_window=128_000),
    }
    runtime = Runtime(settings(tmp_path, models, resilience={"static_reply": STATIC}))
    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="strict"))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert runtime.models["big"].primary.provider.calls == 0  # type: ignore[attr-defined]
    assert await upstream_calls(upstream) == 1


# -- Deadlines --------------------------------------------------------------------------

SLUGGISH = {"provider": "scripted", "options": {"delay_s": 30, "reply": "too late"}}


async def test_deadline_header_gives_a_504_in_openai_format(tmp_path: Path) -> None:
    models = {"sluggish": {**SLUGGISH, "fallbacks": ["sluggish-too"]}, "sluggish-too": SLUGGISH}
    async with serve(Runtime(settings(tmp_path, models))) as client:
        started = time.monotonic()
        response = await client.post(
            "/v1/chat/completions",
            json=chat(model="sluggish"),
            headers={"x-guarita-deadline-ms": "200"},
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "timeout_error",
            "param": None,
            "code": "deadline_exceeded",
        }
    }
    assert elapsed < 30  # cut off, not waited out (neither the model nor its fallback)


async def test_deadline_expiry_falls_to_the_static_answer(tmp_path: Path) -> None:
    config = settings(tmp_path, {"sluggish": SLUGGISH}, resilience={"static_reply": STATIC})
    async with serve(Runtime(config)) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=chat(model="sluggish"),
            headers={"x-guarita-deadline-ms": "200"},
        )
    assert response.status_code == 200
    assert response.headers["x-guarita-fallback-level"] == "static"
    assert content(response) == STATIC


async def test_model_and_agent_deadlines_apply_without_the_header(tmp_path: Path) -> None:
    models = {"sluggish": {**SLUGGISH, "deadline_s": 0.2}, "other": SLUGGISH}
    config = settings(
        tmp_path,
        models,
        agents={"a": {"model": "sluggish"}, "quick": {"model": "other", "deadline_s": 0.2}},
    )
    async with serve(Runtime(config)) as client:
        by_model = await client.post("/v1/chat/completions", json=chat(model="sluggish"))
        by_agent = await client.post("/v1/chat/completions", json=chat(model="quick"))
        by_chat = await client.post("/api/chat", json={"agent": "quick", "message": "hi"})
    for response in (by_model, by_agent, by_chat):
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"


async def test_deadline_header_is_validated_and_clamped(tmp_path: Path) -> None:
    config = settings(
        tmp_path, {"sluggish": SLUGGISH}, resilience={"min_deadline_s": 0.2, "max_deadline_s": 0.3}
    )
    async with serve(Runtime(config)) as client:
        bad = await client.post(
            "/v1/chat/completions",
            json=chat(model="sluggish"),
            headers={"x-guarita-deadline-ms": "soon"},
        )
        huge = await client.post(
            "/v1/chat/completions",
            json=chat(model="sluggish"),
            headers={"x-guarita-deadline-ms": "3600000"},
        )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-guarita-deadline-ms"
    assert huge.status_code == 504  # clamped to max_deadline_s, not an hour


# -- Streams ----------------------------------------------------------------------------


async def test_a_stream_cut_off_midway_ends_with_an_error_event(tmp_path: Path) -> None:
    models = {
        "cut": scripted(
            "one two three four five six",
            fallbacks=["cheap"],
            chaos={"truncate_rate": 1.0, "seed": 3},
        ),
        "cheap": scripted("cheap"),
    }
    runtime = Runtime(settings(tmp_path, models))
    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="cut", stream=True))
    assert response.status_code == 200  # the first bytes were already sent
    events = sse_events(response.text)
    assert "[DONE]" not in events
    chunks = [orjson.loads(e) for e in events]
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-1]["error"]["type"] == "upstream_error"
    assert "cut off" in chunks[-1]["error"]["message"]
    assert runtime.models["cheap"].primary.provider.calls == 0  # type: ignore[attr-defined]


async def test_an_upstream_dropping_the_stream_ends_with_an_error_event(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    await control(upstream, reset=True)
    models = {"dropping": openai_model(upstream, "stream-break")}
    async with serve(Runtime(settings(tmp_path, models))) as client:
        response = await client.post(
            "/v1/chat/completions", json=chat(model="dropping", stream=True)
        )
    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert "error" in orjson.loads(events[-1])
    assert "upstream" in orjson.loads(events[1])["choices"][0]["delta"]["content"]


async def test_a_caller_closing_a_stream_early_is_not_a_deployment_failure(
    tmp_path: Path,
) -> None:
    models = {
        "m": scripted(
            "a b c d e f", options={"chunk_delay_s": 0.01}, breaker={"failure_threshold": 1}
        )
    }
    store = SharedBreakerStore(MemorySharedState())
    async with groups(settings(tmp_path, models), store) as (built, _):
        group = built["m"]
        reply = await group(call(stream=True))
        chunks = reply.chunks()
        await anext(chunks)
        await anext(chunks)
        await chunks.aclose()  # the caller hung up (as on a client disconnect)
        reply = await group(call(stream=True))  # refused here if that had opened it
        assert [c async for c in reply.chunks()]

        async def recorded() -> BreakerState:
            while True:
                state = (await store.snapshot(["m"]))["m"]
                if state.window_calls or state.state != CLOSED:
                    return state
                await asyncio.sleep(0.01)

        state = await asyncio.wait_for(recorded(), timeout=10)
    assert state.state == CLOSED
    assert (state.window_calls, state.window_failures) == (1, 0)  # the complete one only


async def test_a_stream_failing_before_the_first_byte_falls_back(
    gateway: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = gateway
    response = await client.post("/v1/chat/completions", json=chat(model="broken", stream=True))
    assert response.status_code == 200
    assert response.headers["x-guarita-fallback-level"] == "model"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(orjson.loads, events[:-1])
        if c.get("choices")
    )
    assert text == "cheap answer"


async def test_no_first_token_in_ttft_timeout_falls_back(tmp_path: Path) -> None:
    models = {
        "mute": scripted("never", options={"delay_s": 30}, ttft_timeout_s=0.2, retry=ONCE,
                         fallbacks=["cheap"]),
        "cheap": scripted("cheap answer"),
    }  # fmt: skip
    runtime = Runtime(settings(tmp_path, models))
    async with serve(runtime) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="mute", stream=True))
    assert response.headers["x-guarita-fallback-level"] == "model"
    assert sse_events(response.text)[-1] == "[DONE]"
    assert "cheap" in response.text and "never" not in response.text


async def test_a_static_answer_can_be_streamed(gateway: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = gateway
    response = await client.post("/v1/chat/completions", json=chat(model="hopeless", stream=True))
    assert response.headers["x-guarita-fallback-level"] == "static"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert STATIC in response.text


async def test_chaos_errors_fall_back(tmp_path: Path) -> None:
    models = {
        "flaky": scripted(
            "fine", retry=ONCE, fallbacks=["cheap"], chaos={"error_rate": 1.0, "seed": 7}
        ),
        "cheap": scripted("cheap"),
    }
    async with serve(Runtime(settings(tmp_path, models))) as client:
        response = await client.post("/v1/chat/completions", json=chat(model="flaky"))
    assert response.headers["x-guarita-fallback-level"] == "model"
    assert content(response) == "cheap"
