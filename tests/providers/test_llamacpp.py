"""The embedded llama.cpp provider with the real packaged model (Gemma 3 270M, GGUF).

Nothing is faked here: the model is loaded once for the module and every call runs it.
Sampling is greedy (temperature 0, fixed seed) wherever two answers are compared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from guarita.errors import InvalidRequest, ServiceUnavailable
from guarita.providers.llamacpp import LlamaCppProvider, fold_system_prompt
from guarita.settings import LOCAL_MODEL, ModelSettings
from guarita.types import Call, Caller, Chunk, Completion

pytestmark = pytest.mark.model

GREEDY = {"temperature": 0, "seed": 1234}


def settings(**options: Any) -> ModelSettings:
    return ModelSettings(
        provider="llamacpp",
        context_window=2048,
        options={"instances": 1, "max_queue": 2, **options},
    )


async def wait_ready(provider: LlamaCppProvider, limit_s: float = 120.0) -> None:
    """Poll ready() until it is True, failing after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not await provider.ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"model not ready after {limit_s}s")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[LlamaCppProvider]:
    llm = LlamaCppProvider(LOCAL_MODEL, settings())
    await llm.start()
    await wait_ready(llm)
    yield llm
    await llm.aclose()


def make_call(messages: list[dict[str, Any]] | str, **extra: Any) -> Call:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body: dict[str, Any] = {"messages": messages, **extra}
    return Call(request_id="req-test", model=LOCAL_MODEL, body=body, caller=Caller.anonymous())


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def streamed_text(chunks: list[Chunk]) -> str:
    return "".join(choice["delta"].get("content") or "" for c in chunks for choice in c["choices"])


async def test_ready_becomes_true_after_start() -> None:
    llm = LlamaCppProvider(LOCAL_MODEL, settings())
    try:
        await llm.start()
        # start() only schedules the load: nothing has run yet.
        assert await llm.ready() is False
        await wait_ready(llm)
        assert await llm.ready() is True
    finally:
        await llm.aclose()


async def test_complete_gives_an_openai_shaped_answer(provider: LlamaCppProvider) -> None:
    completion = await provider.complete(make_call("Name a colour.", max_tokens=8, **GREEDY))

    body = completion.body
    assert body["object"] == "chat.completion"
    assert body["model"] == LOCAL_MODEL == completion.model
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert completion.usage.input_tokens == usage["prompt_tokens"]
    assert completion.usage.output_tokens == usage["completion_tokens"]


async def test_stream_counts_tokens_like_the_complete_answer(
    provider: LlamaCppProvider,
) -> None:
    call = make_call("Write one short sentence about the sea.", max_tokens=12, **GREEDY)
    # llama.cpp reuses the KV cache of a repeated prompt, which can change the logits a
    # little; one warm-up call puts the complete and the streamed call on the same path.
    await provider.complete(call)

    completion = await provider.complete(call)
    chunks = await collect(provider.stream(call))

    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == LOCAL_MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert [c for c in chunks if c.get("usage")] == [chunks[-1]]
    assert chunks[-1]["choices"] == []
    assert streamed_text(chunks) == completion.text
    assert chunks[-1]["usage"]["prompt_tokens"] == completion.usage.input_tokens > 0
    assert chunks[-1]["usage"] == completion.body["usage"]


async def test_stream_stopped_by_a_stop_sequence_counts_like_complete(
    provider: LlamaCppProvider,
) -> None:
    """A stop sequence ends the answer with finish_reason "stop" as end-of-generation
    does, but the token that completed it was generated and is counted."""
    messages = "Count: one two three"
    await provider.complete(make_call(messages, max_tokens=16, **GREEDY))  # see above
    probe = await provider.complete(make_call(messages, max_tokens=16, **GREEDY))
    text = probe.text
    assert len(text) >= 4, f"need some output to stop on: {text!r}"
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    call = make_call(messages, max_tokens=16, stop=[stop], **GREEDY)

    completion = await provider.complete(call)
    chunks = await collect(provider.stream(call))

    assert completion.body["choices"][0]["finish_reason"] == "stop"
    assert stop not in completion.text
    assert streamed_text(chunks) == completion.text
    assert chunks[-1]["usage"] == completion.body["usage"]


@pytest.mark.parametrize("end_at", [1, 4])
def test_stream_count_leaves_out_the_end_of_generation_token(end_at: int) -> None:
    """When the model ends its turn, the end-of-turn token was sampled but is not part of
    the answer. Callers cannot steer sampling, so this drives the stream's token counter
    directly on a real instance, with a logits processor that forces end-of-turn."""
    from llama_cpp import LogitsProcessorList

    from guarita.providers.llamacpp import _TokenCounter

    llm = LlamaCppProvider(LOCAL_MODEL, settings())._new_llama()
    end_of_turn = llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)[0]

    def force_end(at: int) -> LogitsProcessorList:
        steps = 0

        def processor(input_ids: Any, scores: Any) -> Any:
            nonlocal steps
            steps += 1
            if steps == at:
                scores[:] = -1e9
                scores[end_of_turn] = 0.0
            return scores

        return LogitsProcessorList([processor])

    args: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 20,
        "temperature": 0,
    }
    complete = llm.create_chat_completion(logits_processor=force_end(end_at), **args)
    with _TokenCounter(llm) as counter:
        chunks = list(
            llm.create_chat_completion(stream=True, logits_processor=force_end(end_at), **args)
        )

    assert complete["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert counter.sampled == end_at
    assert counter.usage().to_openai() == complete["usage"]
    assert complete["usage"]["completion_tokens"] == end_at - 1
    assert "sample" not in vars(llm), "the instance's own sample method is back"


def test_fold_system_prompt_puts_system_text_in_the_first_user_turn() -> None:
    folded = fold_system_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use French."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": "Again"},
        ]
    )

    assert folded == [
        {"role": "user", "content": "Be brief.\n\nUse French.\n\nHello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Again"},
    ]
    assert fold_system_prompt([{"role": "system", "content": "Only this"}]) == [
        {"role": "user", "content": "Only this"}
    ]
    plain = [{"role": "user", "content": "hi"}]
    assert fold_system_prompt(plain) == plain


async def test_system_prompt_reaches_the_model(provider: LlamaCppProvider) -> None:
    """Gemma has no system role; the folded system text still counts as prompt."""
    user = {"role": "user", "content": "Say hello."}
    system = {"role": "system", "content": "You are a pirate who speaks in rhymes."}

    bare = await provider.complete(make_call([user], max_tokens=1, **GREEDY))
    with_system = await provider.complete(make_call([system, user], max_tokens=1, **GREEDY))

    assert with_system.usage.input_tokens > bare.usage.input_tokens + 5


async def test_prompt_over_the_context_window_is_invalid_request(
    provider: LlamaCppProvider,
) -> None:
    too_long = "word " * 4000  # well over the 2048-token context

    with pytest.raises(InvalidRequest) as info:
        await provider.complete(make_call(too_long, max_tokens=4))
    assert info.value.code == "context_length_exceeded"

    with pytest.raises(InvalidRequest):
        await collect(provider.stream(make_call(too_long, max_tokens=4)))
    # The instance went back to the pool: the next call is served.
    assert (await provider.complete(make_call("Hi", max_tokens=2))).usage.output_tokens > 0


async def test_full_queue_answers_service_unavailable() -> None:
    llm = LlamaCppProvider(LOCAL_MODEL, settings(max_queue=1))
    try:
        await llm.start()
        await wait_ready(llm)
        calls = [make_call(f"Tell me about the number {i}.", max_tokens=16) for i in range(5)]

        results = await asyncio.gather(
            *(llm.complete(call) for call in calls), return_exceptions=True
        )

        served = [r for r in results if isinstance(r, Completion)]
        refused = [r for r in results if isinstance(r, ServiceUnavailable)]
        assert len(served) + len(refused) == len(calls), results
        # One call runs and one may wait; the others find the queue full.
        assert 1 <= len(served) <= 2
        assert refused
        for error in refused:
            assert error.status_code == 503
            assert error.retry_after is not None
            assert error.headers()["Retry-After"] == "1"
        # Once the burst is over the model serves again.
        again = await llm.complete(make_call("Hi", max_tokens=2))
        assert again.usage.output_tokens > 0
    finally:
        await llm.aclose()


async def test_embeddings_are_one_vector_per_input(provider: LlamaCppProvider) -> None:
    result = await provider.embed(["hello", "a longer sentence to embed", ""])
    assert len(result.vectors) == 3
    dims = {len(vector) for vector in result.vectors}
    assert len(dims) == 1 and dims.pop() > 16  # pooled: same width whatever the length
    assert all(isinstance(x, float) for x in result.vectors[1])
    assert result.vectors[0] != result.vectors[1]
    assert result.usage.input_tokens > 0
