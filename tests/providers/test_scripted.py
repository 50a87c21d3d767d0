"""The scripted provider: the deterministic stand-in other tests and drills rely on.

It runs in-process and talks to nothing, so these are plain unit tests of its behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from guarita.errors import (
    ConfigError,
    GuaritaError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from guarita.providers.base import ProviderRegistry
from guarita.providers.scripted import ScriptedProvider
from guarita.settings import ModelSettings
from guarita.types import Call, Caller, Chunk


def scripted(upstream: str | None = None, **options: Any) -> ScriptedProvider:
    settings = ModelSettings(provider="scripted", upstream=upstream, options=options)
    return ScriptedProvider("scripted-model", settings)


def make_call(text: str = "hello there friend", **extra: Any) -> Call:
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": text},
        ],
        **extra,
    }
    return Call(request_id="req-test", model="scripted-model", body=body, caller=Caller.anonymous())


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


async def test_default_reply_echoes_the_last_user_message() -> None:
    provider = scripted()

    completion = await provider.complete(make_call("hello there friend"))

    assert completion.text == "echo: hello there friend"
    assert completion.body["object"] == "chat.completion"
    assert completion.body["choices"][0]["finish_reason"] == "stop"
    assert completion.model == "scripted-model"
    # Words: 2 + 2 + 2 + 3 in the prompt, 4 in the answer.
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (9, 4)
    assert completion.body["usage"] == completion.usage.to_openai()


async def test_fixed_reply_and_upstream_name() -> None:
    provider = scripted(upstream="scripted-upstream", reply="always this")

    first = await provider.complete(make_call("a"))
    second = await provider.complete(make_call("b"))

    assert first.text == second.text == "always this"
    assert first.model == first.body["model"] == "scripted-upstream"


async def test_replies_are_used_in_turn_and_cycle() -> None:
    provider = scripted(replies=["one", "two", "three"])

    texts = [(await provider.complete(make_call())).text for _ in range(5)]

    assert texts == ["one", "two", "three", "one", "two"]


async def test_fail_first_fails_the_first_calls_only() -> None:
    provider = scripted(fail_first=2)

    outcomes = []
    for _ in range(4):
        try:
            await provider.complete(make_call())
            outcomes.append("ok")
        except UpstreamError:
            outcomes.append("failed")

    assert outcomes == ["failed", "failed", "ok", "ok"]
    assert provider.calls == 4


async def test_fail_every_fails_every_nth_call() -> None:
    provider = scripted(fail_every=3)

    outcomes = []
    for _ in range(7):
        try:
            await provider.complete(make_call())
            outcomes.append(True)
        except GuaritaError:
            outcomes.append(False)

    assert outcomes == [True, True, False, True, True, False, True]


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("upstream", UpstreamError, 502),
        ("timeout", UpstreamTimeout, 504),
        ("rate_limit", UpstreamRateLimited, 429),
        ("unavailable", UpstreamUnavailable, 502),
    ],
)
async def test_error_kinds(kind: str, error: type[GuaritaError], status: int) -> None:
    provider = scripted(fail_first=1, error=kind)

    with pytest.raises(error) as info:
        await provider.complete(make_call())

    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.retry_after == 1
    assert "call 1" in info.value.message


async def test_unknown_error_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        scripted(error="explode")

    assert "explode" in str(info.value)
    assert "rate_limit" in str(info.value), "the message should list the known kinds"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_the_answer(field: str) -> None:
    provider = scripted(reply="one two three four five six")

    completion = await provider.complete(make_call(**{field: 4}))

    assert completion.text == "one two three four"
    assert completion.usage.output_tokens == 4


async def test_stream_chunks_and_final_usage() -> None:
    provider = scripted(upstream="scripted-upstream")
    call = make_call("stream this please")

    chunks = await collect(provider.stream(call))
    completion = await provider.complete(call)

    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "scripted-upstream" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    first, *words, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in words] == [
        "echo:",
        " stream",
        " this",
        " please",
    ]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"] == completion.usage.to_openai()
    assert "".join(c["choices"][0]["delta"]["content"] for c in words) == completion.text


async def test_stream_truncated_by_max_tokens() -> None:
    provider = scripted(reply="a b c d e")

    chunks = await collect(provider.stream(make_call(max_tokens=2)))

    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "a b"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


async def test_failing_stream_raises_before_any_chunk() -> None:
    provider = scripted(fail_first=1, error="unavailable")
    received: list[Chunk] = []

    with pytest.raises(UpstreamUnavailable):
        async for chunk in provider.stream(make_call()):
            received.append(chunk)

    assert received == []
    assert len(await collect(provider.stream(make_call()))) > 2


async def test_embeddings_are_deterministic_per_text() -> None:
    provider = scripted()

    first = await provider.embed(["alpha beta", "gamma"])
    again = await provider.embed(["gamma"])

    assert len(first.vectors) == 2
    assert all(len(v) == 16 for v in first.vectors)
    assert all(-1.0 <= x < 1.0 for v in first.vectors for x in v)
    assert first.vectors[0] != first.vectors[1]
    assert again.vectors == [first.vectors[1]]
    assert first.usage.input_tokens == 3
    assert first.model == "scripted-model"


async def test_registry_builds_the_scripted_provider() -> None:
    provider = ProviderRegistry().create(
        "from-registry", ModelSettings(provider="scripted", options={"reply": "hi"})
    )

    assert isinstance(provider, ScriptedProvider)
    assert (await provider.complete(make_call())).text == "hi"
    assert await provider.ready() is True
