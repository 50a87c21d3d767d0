"""Pipeline composition and the finish hooks that let stages see a whole stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from guarita.pipeline import Next, compose
from guarita.pipeline.account import Accounting
from guarita.providers.common import chunk
from guarita.telemetry.prices import Price
from guarita.types import Call, Caller, Completion, Reply, Usage


def make_call(stream: bool = False) -> Call:
    return Call(
        request_id="r",
        model="m",
        body={"messages": [{"role": "user", "content": "hi"}]},
        caller=Caller.anonymous(),
        stream=stream,
    )


async def test_stages_run_outermost_first() -> None:
    order: list[str] = []

    class Tag:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, call: Call, next: Next) -> Reply:
            order.append(self.name)
            return await next(call)

    async def terminal(call: Call) -> Reply:
        order.append("provider")
        return Reply.complete("p", Completion(body={}, usage=Usage(), model="m"))

    await compose([Tag("a"), Tag("b")], terminal)(make_call())
    assert order == ["a", "b", "provider"]


async def test_accounting_prices_a_complete_answer() -> None:
    async def terminal(call: Call) -> Reply:
        return Reply.complete("p", Completion(body={}, usage=Usage(1000, 500), model="m"))

    reply = await compose([Accounting({"m": Price(3.0, 15.0)})], terminal)(make_call())
    assert reply.cost_usd == pytest.approx(0.0105)


async def test_stream_hooks_run_once_at_the_end_with_the_whole_text() -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        yield chunk(cid="c", model="m", role="assistant", content="")
        yield chunk(cid="c", model="m", content="Hello")
        yield chunk(cid="c", model="m", content=" world")
        yield chunk(cid="c", model="m", finish_reason="stop")
        yield chunk(cid="c", model="m", usage=Usage(10, 2))

    async def terminal(call: Call) -> Reply:
        return Reply(model="m", provider="p", source=source())

    seen: list[tuple[str, float, BaseException | None]] = []
    reply = await compose([Accounting({"m": Price(1.0, 1.0)})], terminal)(make_call(stream=True))
    reply.on_finish(lambda r, e: seen.append((r.text, r.cost_usd, e)))
    assert seen == []  # nothing is complete before the stream is read
    received = [c async for c in reply.chunks()]
    assert len(received) == 5
    assert seen == [("Hello world", pytest.approx(12 / 1e6), None)]
    assert reply.finish_reason == "stop" and reply.usage == Usage(10, 2)


async def test_a_failing_stream_reports_its_error_to_the_hooks() -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        yield chunk(cid="c", model="m", content="partial")
        raise ConnectionError("upstream went away")

    reply = Reply(model="m", provider="p", source=source())
    errors: list[BaseException | None] = []
    reply.on_finish(lambda r, e: errors.append(e))
    with pytest.raises(ConnectionError):
        async for _ in reply.chunks():
            pass
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
    assert reply.text == "partial"


# -- async finish hooks -------------------------------------------------------------------


async def test_an_async_hook_on_a_complete_answer_is_awaited_at_once() -> None:
    reply = Reply.complete("p", Completion(body={}, usage=Usage(1, 1), model="m"))
    seen: list[str] = []

    async def hook(done: Reply, error: BaseException | None) -> None:
        seen.append(f"{done.usage.total_tokens} {error}")

    await reply.after(hook)
    assert seen == ["2 None"]


async def test_async_hooks_of_a_stream_run_after_it_ends_in_the_background() -> None:
    """Through Recording: the hooks run in its background set, after the sync hooks, even
    one after a failing one, and ``aclose`` waits for them."""
    from guarita.pipeline import Background

    background = Background()

    async def source() -> AsyncIterator[dict[str, Any]]:
        yield chunk(cid="c", model="m", content="Hello")
        yield chunk(cid="c", model="m", usage=Usage(3, 1))

    reply = Reply(model="m", provider="p", source=source(), spawn=background.spawn)
    order: list[str] = []
    reply.on_finish(lambda done, error: order.append("sync"))

    async def failing(done: Reply, error: BaseException | None) -> None:
        order.append("failing")
        raise RuntimeError("boom")

    async def settle(done: Reply, error: BaseException | None) -> None:
        order.append(f"settle {done.usage.total_tokens}")

    await reply.after(failing)
    await reply.after(settle)
    assert order == []
    assert [c async for c in reply.chunks()]
    assert order == ["sync"] and len(background) == 1  # the stream's end does not wait
    await background.aclose()
    assert order == ["sync", "failing", "settle 4"] and len(background) == 0
