"""The OpenAI-compatible provider against a fake OpenAI server in its own process.

Hosted OpenAI cannot be reached from the test machine, so every test here talks over real
HTTP to ``tests/fakes/openai_upstream.py``, which speaks OpenAI's documented
chat-completions and embeddings wire format, requires ``Authorization: Bearer <key>``, and
picks a behaviour (failure status, slowness, broken body or stream) from the model name.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from guarita.errors import (
    ConfigError,
    GuaritaError,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from guarita.providers.openai_compat import OpenAICompatProvider
from guarita.types import Call, Caller, Chunk
from tests.helpers import UPSTREAM_KEY, FakeUpstream, free_port
from tests.providers.support import provider_factory, running_fake

KEY_ENV = "GUARITA_TEST_OPENAI_KEY"

MakeProvider = Callable[..., OpenAICompatProvider]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with running_fake("openai_upstream", tmp_path_factory.mktemp("openai-fake")) as fake:
        yield fake


@pytest.fixture
async def make_provider(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeProvider]:
    """Build providers for the fake upstream with the right key in ``KEY_ENV``; close them all."""
    async with provider_factory(
        OpenAICompatProvider,
        provider="openai",
        model_name="test-model",
        default_upstream="gpt-test",
        upstream=upstream,
        key_env=KEY_ENV,
        monkeypatch=monkeypatch,
    ) as make:
        yield make


def make_call(text: str = "hello there", **extra: Any) -> Call:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **extra}
    return Call(request_id="req-test", model="test-model", body=body, caller=Caller.anonymous())


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


async def test_complete_passes_the_body_through_and_reads_usage(
    make_provider: MakeProvider, upstream: FakeUpstream
) -> None:
    provider = make_provider("gpt-upstream-name")
    call = make_call(
        "what is up",
        temperature=0.3,
        user="user-42",
        metadata={"team": "blue", "nested": {"n": 1}},
        x_vendor_field=[1, 2],
    )

    completion = await provider.complete(call)

    sent = upstream.last_request()
    assert sent["body"] == {**call.body, "model": "gpt-upstream-name"}
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "model" not in call.body, "the caller's body must not be modified"
    assert completion.text == "upstream says: what is up"
    assert completion.body["object"] == "chat.completion"
    assert completion.model == "gpt-upstream-name"
    # Fake counts words: 3 in the prompt, 5 in the answer.
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (3, 5)


async def test_complete_keeps_the_upstream_bytes(
    make_provider: MakeProvider, upstream: FakeUpstream
) -> None:
    provider = make_provider()
    call = make_call("bytes please ✓")

    completion = await provider.complete(call)

    assert completion.raw is not None
    assert orjson.loads(completion.raw) == completion.body
    # The same request sent directly gives the same bytes (but for the clock).
    async with httpx.AsyncClient() as client:
        direct = await client.post(
            upstream.base_url + "/v1/chat/completions",
            json={**call.body, "model": "gpt-test"},
            headers={"authorization": f"Bearer {UPSTREAM_KEY}"},
        )

    def unclocked(raw: bytes) -> bytes:
        return re.sub(rb'"created":\d+', b'"created":0', raw)

    assert unclocked(completion.raw) == unclocked(direct.content)


async def test_stream_yields_chunks_ending_with_usage(
    make_provider: MakeProvider, upstream: FakeUpstream
) -> None:
    provider = make_provider("gpt-streamer")

    chunks = await collect(provider.stream(make_call("stream me")))

    sent = upstream.last_request()["body"]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "gpt-streamer"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(choice["delta"].get("content") or "" for c in chunks for choice in c["choices"])
    assert text == "upstream says: stream me"
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert sum(1 for c in chunks if c.get("usage")) == 1


async def test_wrong_key_is_upstream_auth_failure_naming_the_variable(
    make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk-wrong-secret-value-123"
    monkeypatch.setenv(KEY_ENV, wrong)
    provider = make_provider()

    with pytest.raises(UpstreamAuthFailed) as info:
        await provider.complete(make_call())

    assert info.value.status_code == 502
    assert KEY_ENV in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message
    assert wrong not in str(info.value)
    assert UPSTREAM_KEY not in str(info.value)


async def test_401_from_upstream_in_a_stream_is_upstream_auth_failure(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider("fail-401")

    with pytest.raises(UpstreamAuthFailed) as info:
        await collect(provider.stream(make_call()))

    assert info.value.status_code == 502
    assert KEY_ENV in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message
    assert UPSTREAM_KEY not in info.value.message


async def test_429_is_rate_limited_with_the_upstream_retry_after(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider("fail-429")

    with pytest.raises(UpstreamRateLimited) as info:
        await provider.complete(make_call())

    assert info.value.retry_after == 7
    assert info.value.status_code == 429
    assert info.value.headers() == {"Retry-After": "7"}


async def test_500_is_upstream_error(make_provider: MakeProvider) -> None:
    provider = make_provider("fail-500")

    with pytest.raises(UpstreamError) as info:
        await provider.complete(make_call())

    assert type(info.value) is UpstreamError
    assert info.value.status_code == 502
    assert "500" in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message
    assert "fake failure 500" in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message


async def test_400_is_invalid_request(make_provider: MakeProvider) -> None:
    provider = make_provider("fail-400")

    with pytest.raises(InvalidRequest) as info:
        await provider.complete(make_call())

    assert info.value.status_code == 400
    assert info.value.code == "upstream_rejected_request"
    assert "fake failure 400" in info.value.message


async def test_slow_upstream_times_out(make_provider: MakeProvider) -> None:
    provider = make_provider("slow", timeout_s=0.5)

    with pytest.raises(UpstreamTimeout) as info:
        await provider.complete(make_call())

    assert info.value.status_code == 504


async def test_unreachable_upstream_is_unavailable(make_provider: MakeProvider) -> None:
    # A port nothing listens on: the connection is refused.
    provider = make_provider(base_url=f"http://127.0.0.1:{free_port()}/v1")

    with pytest.raises(UpstreamUnavailable) as info:
        await provider.complete(make_call())

    assert info.value.status_code == 502
    with pytest.raises(UpstreamUnavailable):
        await collect(provider.stream(make_call()))


async def test_non_json_answer_is_upstream_error(make_provider: MakeProvider) -> None:
    provider = make_provider("garbage")

    with pytest.raises(UpstreamError) as info:
        await provider.complete(make_call())

    assert info.value.status_code == 502
    assert "invalid JSON" in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message


async def test_broken_stream_raises_instead_of_ending_cleanly(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider("stream-break")
    received: list[Chunk] = []

    with pytest.raises(GuaritaError) as info:
        async for chunk in provider.stream(make_call("one two three four")):
            received.append(chunk)

    # A dropped connection mid-answer is an upstream failure (502), never a clean end.
    assert isinstance(info.value, UpstreamError)
    assert info.value.status_code == 502
    assert received, "the chunks sent before the break should have arrived"
    assert not any(c.get("usage") for c in received), "no usage for a broken stream"


async def test_missing_key_variable_is_config_error_naming_it(
    make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)

    with pytest.raises(ConfigError) as info:
        make_provider()

    assert KEY_ENV in str(info.value)


async def test_embeddings(make_provider: MakeProvider, upstream: FakeUpstream) -> None:
    provider = make_provider("text-embedding-test")

    result = await provider.embed(["hello world", "a"])

    sent = upstream.last_request()
    assert sent["body"] == {"model": "text-embedding-test", "input": ["hello world", "a"]}
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    # The fake's vector is [len(text), 1.0, 0.5], in input order.
    assert result.vectors == [[11.0, 1.0, 0.5], [1.0, 1.0, 0.5]]
    assert result.usage.input_tokens == 3
    assert result.model == "text-embedding-test"
