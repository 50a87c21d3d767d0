"""The Anthropic provider against a fake Anthropic server in its own process.

Hosted Anthropic cannot be reached from the test machine, so every test here talks over
real HTTP to ``tests/fakes/anthropic_upstream.py``, which speaks Anthropic's documented
Messages API: it requires ``x-api-key``, ``anthropic-version`` and ``max_tokens``, refuses
a ``system`` role inside ``messages`` and any top-level field the API does not define,
streams the documented server-sent events, and picks a failure from the model name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from guarita.errors import (
    ConfigError,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
)
from guarita.providers.anthropic import API_VERSION, DEFAULT_MAX_TOKENS, AnthropicProvider
from guarita.types import Call, Caller, Chunk
from tests.helpers import UPSTREAM_KEY, FakeUpstream
from tests.providers.support import provider_factory, running_fake

KEY_ENV = "GUARITA_TEST_ANTHROPIC_KEY"

MakeProvider = Callable[..., AnthropicProvider]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with running_fake("anthropic_upstream", tmp_path_factory.mktemp("anthropic-fake")) as fake:
        yield fake


@pytest.fixture
async def make_provider(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeProvider]:
    """Build providers for the fake upstream with the right key in ``KEY_ENV``; close them all."""
    async with provider_factory(
        AnthropicProvider,
        provider="anthropic",
        model_name="test-claude",
        default_upstream="claude-test",
        upstream=upstream,
        key_env=KEY_ENV,
        monkeypatch=monkeypatch,
    ) as make:
        yield make


def make_call(messages: list[dict[str, Any]] | str = "hello there", **extra: Any) -> Call:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body: dict[str, Any] = {"messages": messages, **extra}
    return Call(request_id="req-test", model="test-claude", body=body, caller=Caller.anonymous())


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


async def test_request_is_translated_to_the_messages_api(
    make_provider: MakeProvider, upstream: FakeUpstream
) -> None:
    provider = make_provider("claude-upstream-name")
    call = make_call(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
        temperature=0.2,
        top_p=0.9,
        stop="never-seen",
        user="user-42",
    )

    await provider.complete(call)

    sent = upstream.last_request()
    assert sent["body"] == {
        "model": "claude-upstream-name",
        "system": "Be terse.",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
        ],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["never-seen"],
    }
    assert sent["headers"]["x-api-key"] == UPSTREAM_KEY
    assert sent["headers"]["anthropic-version"] == API_VERSION
    assert "authorization" not in sent["headers"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_callers_max_tokens_is_sent(
    make_provider: MakeProvider, upstream: FakeUpstream, field: str
) -> None:
    provider = make_provider()

    await provider.complete(make_call("hi", **{field: 33}))

    assert upstream.last_request()["body"]["max_tokens"] == 33


async def test_answer_is_translated_to_an_openai_chat_completion(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider("claude-answerer")
    call = make_call(
        [
            {"role": "system", "content": "two words"},
            {"role": "user", "content": "what is new"},
        ]
    )

    completion = await provider.complete(call)

    body = completion.body
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("msg_")
    assert body["model"] == "claude-answerer" == completion.model
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "anthropic says: what is new"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    # The fake counts words: 2 system + 3 user in, 5 out.
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (5, 5)
    assert completion.text == "anthropic says: what is new"


async def test_stop_sequence_and_max_tokens_map_to_finish_reasons(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()

    stopped = await provider.complete(make_call("one two three", stop=["two"]))
    cut = await provider.complete(make_call("one two three", max_tokens=2))

    assert stopped.text == "anthropic says: one "
    assert stopped.body["choices"][0]["finish_reason"] == "stop"
    assert cut.text == "anthropic says:"
    assert cut.body["choices"][0]["finish_reason"] == "length"
    assert cut.usage.output_tokens == 2


async def test_stream_is_translated_to_openai_chunks(
    make_provider: MakeProvider, upstream: FakeUpstream
) -> None:
    provider = make_provider("claude-streamer")
    call = make_call(
        [
            {"role": "system", "content": "sys prompt"},
            {"role": "user", "content": "stream me please"},
        ]
    )

    chunks = await collect(provider.stream(call))

    sent = upstream.last_request()["body"]
    assert sent["stream"] is True
    assert sent["system"] == "sys prompt"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("msg_")
    assert all(c["model"] == "claude-streamer" for c in chunks)

    first, *middle, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"]["content"] for c in middle]
    assert deltas == ["anthropic", " says:", " stream", " me", " please"]
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["delta"] == {}
    assert usage["choices"] == []
    # Input tokens come from message_start (2 system + 3 user words), output tokens
    # from message_delta (5 answer words).
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


async def test_stream_cut_by_max_tokens_finishes_with_length(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()

    chunks = await collect(provider.stream(make_call("a b c d", max_tokens=3)))

    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_529_overloaded_is_upstream_error(make_provider: MakeProvider) -> None:
    provider = make_provider("fail-529")

    with pytest.raises(UpstreamError) as info:
        await provider.complete(make_call())

    assert type(info.value) is UpstreamError
    assert info.value.status_code == 502
    assert "529" in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message
    assert "fake failure 529" in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message


async def test_429_is_rate_limited_with_the_upstream_retry_after(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider("fail-429")

    with pytest.raises(UpstreamRateLimited) as info:
        await provider.complete(make_call())
    assert info.value.retry_after == 3
    assert info.value.status_code == 429

    with pytest.raises(UpstreamRateLimited) as streamed:
        await collect(provider.stream(make_call()))
    assert streamed.value.retry_after == 3


async def test_error_event_mid_stream_raises(make_provider: MakeProvider) -> None:
    provider = make_provider("stream-error")
    received: list[Chunk] = []

    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(make_call("one two three")):
            received.append(chunk)

    assert "Overloaded" in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message
    contents = [c["choices"][0]["delta"].get("content") for c in received]
    assert contents == ["", "anthropic", " says:"]
    assert not any(c.get("usage") for c in received), "no usage for a failed stream"


async def test_wrong_key_is_upstream_auth_failure_naming_the_variable(
    make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk-ant-wrong-secret-456"
    monkeypatch.setenv(KEY_ENV, wrong)
    provider = make_provider()

    with pytest.raises(UpstreamAuthFailed) as info:
        await provider.complete(make_call())

    assert info.value.status_code == 502
    assert KEY_ENV in str(info.value.detail)
    assert "127.0.0.1" not in info.value.message and KEY_ENV not in info.value.message
    assert wrong not in info.value.message


async def test_unsupported_role_is_refused_before_calling_upstream(
    make_provider: MakeProvider, upstream: FakeUpstream
) -> None:
    provider = make_provider()
    await provider.complete(make_call("marker request"))

    with pytest.raises(InvalidRequest) as info:
        await provider.complete(
            make_call(
                [
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "content": "result", "tool_call_id": "t1"},
                ]
            )
        )

    assert info.value.param == "messages"
    assert "tool" in info.value.message
    assert upstream.last_request()["body"]["messages"][0]["content"] == "marker request"


async def test_key_variable_is_required(
    make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as no_setting:
        make_provider(api_key_env=None)
    assert "api_key_env" in str(no_setting.value)

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError) as unset:
        make_provider()
    assert KEY_ENV in str(unset.value)


async def test_fake_refuses_what_the_messages_api_refuses(upstream: FakeUpstream) -> None:
    """The checks above rely on the fake enforcing the API's rules; make sure it does."""
    url = upstream.base_url + "/v1/messages"
    good_headers = {"x-api-key": UPSTREAM_KEY, "anthropic-version": API_VERSION}
    good = {
        "model": "claude-test",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with httpx.AsyncClient() as client:
        ok = await client.post(url, json=good, headers=good_headers)
        no_key = await client.post(url, json=good, headers={"anthropic-version": API_VERSION})
        bad_key = await client.post(url, json=good, headers={**good_headers, "x-api-key": "nope"})
        no_version = await client.post(url, json=good, headers={"x-api-key": UPSTREAM_KEY})
        no_max = await client.post(
            url, json={k: v for k, v in good.items() if k != "max_tokens"}, headers=good_headers
        )
        system_role = await client.post(
            url,
            headers=good_headers,
            json={
                **good,
                "messages": [{"role": "system", "content": "x"}, *good["messages"]],
            },
        )
        openai_stop = await client.post(url, json={**good, "stop": ["x"]}, headers=good_headers)

    assert ok.status_code == 200
    assert ok.json()["content"] == [{"type": "text", "text": "anthropic says: hi"}]
    for response in (no_key, bad_key):
        assert response.status_code == 401
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == "authentication_error"
    for response in (no_version, no_max, system_role, openai_stop):
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in no_max.json()["error"]["message"]
