"""Embeddings go through the pipeline like chat: recorded, costed, retried and balanced by
the model's group, but never answered by a chat fallback (rules, static answer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guarita.errors import UpstreamError
from guarita.runtime import Runtime
from guarita.settings import load_settings
from guarita.types import Call, Caller


def runtime_for(tmp_path: Path, model: dict[str, object]) -> Runtime:
    settings = load_settings(
        data_dir=tmp_path,
        models={"emb": model},
        agents={"a": {"model": "emb"}},
        default_agent="a",
        resilience={"static_reply": "The service is busy."},
    )
    return Runtime(settings)


def embeddings_call(texts: list[str]) -> Call:
    return Call(
        request_id="emb-1",
        model="emb",
        body={"input": texts},
        caller=Caller.anonymous(),
        endpoint="embeddings",
        operation="embeddings",
    )


async def test_an_embeddings_call_is_recorded_and_costed(tmp_path: Path) -> None:
    runtime = runtime_for(
        tmp_path, {"provider": "scripted", "price_input_per_1m": 1.0, "price_output_per_1m": 0}
    )
    await runtime.start()
    try:
        reply = await runtime.pipeline(embeddings_call(["one two", "three"]))
        assert reply.embeddings is not None and len(reply.embeddings.vectors) == 2
        assert reply.usage.input_tokens > 0 and reply.cost_usd > 0
        assert runtime.records.pending == 1
    finally:
        await runtime.aclose()
    assert runtime.records.written == 1


async def test_an_embeddings_call_is_retried_by_its_group(tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path, {"provider": "scripted", "options": {"fail_first": 1},
                                     "retry": {"base_delay_s": 0}})  # fmt: skip
    await runtime.start()
    try:
        reply = await runtime.pipeline(embeddings_call(["x"]))
        assert reply.embeddings is not None and reply.fallback_level == "primary"
    finally:
        await runtime.aclose()


async def test_a_failed_embeddings_call_gets_no_chat_fallback(tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path, {"provider": "scripted", "options": {"fail_every": 1},
                                     "retry": {"max_attempts": 1}})  # fmt: skip
    await runtime.start()
    try:
        with pytest.raises(UpstreamError):  # not the static chat answer
            await runtime.pipeline(embeddings_call(["x"]))
    finally:
        await runtime.aclose()
