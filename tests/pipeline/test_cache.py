"""The response cache's exact tier: hits within a namespace only, streams replayed and
stored only when complete, bypass, TTLs, bounded memory, and entries shared through Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guarita.cache.exact import LocalEntries, SharedEntries, request_key
from guarita.errors import UpstreamError
from guarita.pipeline import Background, compose
from guarita.pipeline.cache import ResponseCache, bypass_requested
from guarita.providers.common import chunk, completion_body, completion_id
from guarita.resilience.fallback import FallbackChain
from guarita.runtime import Runtime
from guarita.settings import ModelSettings, ResponseCachePolicy, load_settings
from guarita.state import Limit
from guarita.state.redis import RedisSharedState
from guarita.telemetry.prices import Price
from guarita.types import Call, Caller, Completion, FallbackLevel, Reply, Usage
from tests.helpers import REDIS_URL, FakeClock, query

PRICE = Price(3.0, 15.0)
EXACT = ResponseCachePolicy(mode="exact", ttl_s=60)


def make_call(text: str = "What is the capital of France?", *, key: str = "k1",
              stream: bool = False, agent: str | None = None, request_id: str = "r",
              **body: Any) -> Call:  # fmt: skip
    return Call(request_id=request_id, model="m", agent=agent, stream=stream,
                body={"messages": [{"role": "user", "content": text}], **body},
                caller=Caller(key, "svc", "pro"))  # fmt: skip


class Upstream:
    """A terminal that answers ``answer: <text>``, counting its calls; streams on request,
    optionally cut off after the first chunk (no finish reason) or failing mid-stream."""

    def __init__(self) -> None:
        self.calls = 0
        self.cut = False
        self.fail = False
        self.level = FallbackLevel.PRIMARY

    async def __call__(self, call: Call) -> Reply:
        self.calls += 1
        text = "answer: " + str(call.messages[-1]["content"])
        usage = Usage(12, 8)
        if not call.stream:
            body = completion_body(cid=completion_id(), model="m", text=text,
                                   finish_reason="stop", usage=usage)  # fmt: skip
            reply = Reply.complete("p", Completion(body=body, usage=usage, model="m"))
        else:
            reply = Reply(model="m", provider="p", source=self._stream(text, usage))
        reply.served_by = "m"
        reply.fallback_level = self.level
        return reply

    async def _stream(self, text: str, usage: Usage) -> AsyncIterator[dict[str, Any]]:
        yield chunk(cid="c", model="m", role="assistant", content="")
        yield chunk(cid="c", model="m", content=text[:5])
        if self.fail:
            raise UpstreamError("the upstream went away")
        if self.cut:
            return
        yield chunk(cid="c", model="m", content=text[5:])
        yield chunk(cid="c", model="m", finish_reason="stop")
        yield chunk(cid="c", model="m", usage=usage)


def stage(clock: FakeClock | None = None, *, policy: ResponseCachePolicy = EXACT,
          entries: Any = None, agents: bool = False) -> ResponseCache:  # fmt: skip
    policies = {"a": policy} if agents else {}
    return ResponseCache(
        models={} if agents else {"m": policy}, agents=policies,
        entries=entries if entries is not None else LocalEntries(max_entries=100,
                                                                  max_bytes=1_000_000),
        prices={"m": PRICE}, stale_s=3600, max_entry_bytes=100_000, economy_ttl_factor=2.0,
        **({"clock": clock} if clock else {}),
    )  # fmt: skip


async def test_the_same_request_is_answered_from_the_cache() -> None:
    upstream = Upstream()
    pipeline = compose([stage()], upstream)
    first = make_call()
    answer = await pipeline(first)
    assert first.response_headers["x-guarita-cache"] == "miss" and first.record.cache == "miss"
    second = make_call()
    hit = await pipeline(second)
    assert upstream.calls == 1
    assert second.response_headers["x-guarita-cache"] == "hit" and hit.cache == "hit"
    assert hit.text == answer.text and hit.provider == "cache"
    assert hit.completion is not None and answer.completion is not None
    assert hit.completion.body["id"] != answer.completion.body["id"]
    assert hit.billed_usage == Usage() and hit.usage == Usage(12, 8)  # shown, not consumed
    assert second.record.cache_saved_usd == pytest.approx(PRICE.cost(Usage(12, 8)))


async def test_no_entry_is_served_across_namespaces() -> None:
    upstream = Upstream()
    pipeline = compose([stage()], upstream)
    await pipeline(make_call(key="k1"))
    other = make_call(key="k2")
    await pipeline(other)
    assert upstream.calls == 2 and other.record.cache == "miss"


async def test_an_agent_may_share_its_entries_between_callers() -> None:
    upstream = Upstream()
    shared = ResponseCachePolicy(mode="exact", namespace="agent")
    pipeline = compose([stage(policy=shared, agents=True)], upstream)
    await pipeline(make_call(key="k1", agent="a"))
    other = make_call(key="k2", agent="a")
    await pipeline(other)
    assert upstream.calls == 1 and other.record.cache == "hit"


@pytest.mark.parametrize(
    "change",
    [{"temperature": 0.3}, {"max_tokens": 20}, {"tools": [{"type": "function", "function":
     {"name": "f", "parameters": {}}}]}, {"response_format": {"type": "json_object"}}],
)  # fmt: skip
async def test_anything_that_can_change_the_answer_is_in_the_key(change: dict[str, Any]) -> None:
    upstream = Upstream()
    pipeline = compose([stage()], upstream)
    await pipeline(make_call())
    changed = make_call(**change)
    await pipeline(changed)
    assert upstream.calls == 2 and changed.record.cache == "miss"


def test_what_cannot_change_the_answer_is_not_in_the_key() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert request_key("model:m", body) == request_key("model:m", {**body, "user": "u-42"})
    assert request_key("model:m", body) == request_key("model:m", {**dict(reversed(body.items()))})
    assert request_key("model:m", body) != request_key("model:other", body)


async def test_temperatures_above_the_policy_are_not_cached() -> None:
    upstream = Upstream()
    cool = ResponseCachePolicy(mode="exact", max_temperature=0.5)
    pipeline = compose([stage(policy=cool)], upstream)
    for _ in range(2):
        await pipeline(make_call(temperature=0.9))
    warm = make_call()  # no temperature: the provider's default, 1.0
    await pipeline(warm)
    assert upstream.calls == 3 and warm.record.cache is None
    assert "x-guarita-cache" not in warm.response_headers
    for _ in range(2):
        await pipeline(make_call(temperature=0.2))
    assert upstream.calls == 4


async def test_bypass_skips_the_lookup_and_refreshes_the_entry() -> None:
    upstream = Upstream()
    pipeline = compose([stage()], upstream)
    await pipeline(make_call())
    fresh = make_call()
    fresh.cache_bypass = True
    await pipeline(fresh)
    assert upstream.calls == 2 and fresh.response_headers["x-guarita-cache"] == "bypass"
    assert bypass_requested("no-cache", None) and bypass_requested("max-age=0, no-store", None)
    assert bypass_requested(None, "bypass") and not bypass_requested("max-age=60", None)


async def test_entries_expire_and_economy_mode_keeps_them_longer() -> None:
    clock = FakeClock(1_000_000)
    upstream = Upstream()
    pipeline = compose([stage(clock)], upstream)
    await pipeline(make_call("plain"))
    saving = make_call("economy")
    saving.economy = True
    await pipeline(saving)
    clock.advance(90)  # past the TTL (60 s), within twice it
    again, saved = make_call("plain"), make_call("economy")
    await pipeline(again)
    await pipeline(saved)
    assert again.record.cache == "miss" and saved.record.cache == "hit"
    assert upstream.calls == 3


async def read(pipeline: Any, call: Call) -> tuple[Reply, list[dict[str, Any]]]:
    """Stream ``call`` to its end, then wait for its finish hooks (the cache's store runs
    in a task, as Recording arranges in a real pipeline)."""
    background = Background()
    reply = await pipeline(call)
    reply.spawn = background.spawn
    try:
        chunks = [c async for c in reply.chunks()]
    finally:
        await background.aclose()
    return reply, chunks


async def test_a_streamed_miss_is_stored_and_a_streamed_hit_replays_it() -> None:
    upstream = Upstream()
    pipeline = compose([stage()], upstream)
    miss, sent = await read(pipeline, make_call(stream=True))
    replay, chunks = await read(pipeline, make_call(stream=True))
    assert upstream.calls == 1 and replay.cache == "hit"
    assert replay.text == miss.text == "answer: What is the capital of France?"
    assert chunks[-1]["usage"] == Usage(12, 8).to_openai() and chunks[-1]["choices"] == []
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert len(sent) == 5
    complete = await pipeline(make_call())  # the same request, not streamed: the same entry
    assert complete.cache == "hit" and complete.text == miss.text


@pytest.mark.parametrize("how", ["cut", "fail"])
async def test_a_stream_that_did_not_end_normally_is_not_stored(how: str) -> None:
    upstream = Upstream()
    setattr(upstream, how, True)
    pipeline = compose([stage()], upstream)
    if how == "fail":
        with pytest.raises(UpstreamError):
            await read(pipeline, make_call(stream=True))
    else:
        reply, _ = await read(pipeline, make_call(stream=True))
        assert reply.finish_reason is None
    setattr(upstream, how, False)
    again = make_call(stream=True)
    await pipeline(again)
    assert upstream.calls == 2 and again.record.cache == "miss"


async def test_an_answer_from_a_fallback_level_is_not_stored() -> None:
    upstream = Upstream()
    upstream.level = FallbackLevel.STATIC
    pipeline = compose([stage()], upstream)
    await pipeline(make_call())
    upstream.level = FallbackLevel.PRIMARY
    await pipeline(make_call())
    assert upstream.calls == 2


async def test_the_in_process_entries_are_bounded() -> None:
    entries = LocalEntries(max_entries=3, max_bytes=1_000_000)
    pipeline = compose([stage(entries=entries)], Upstream())
    for i in range(5):
        await pipeline(make_call(f"question {i}"))
    assert len(entries) == 3 and entries.evicted == 2
    small = LocalEntries(max_entries=100, max_bytes=600)
    pipeline = compose([stage(entries=small)], Upstream())
    for i in range(5):
        await pipeline(make_call(f"question {i}"))
    assert small.bytes <= 600 and len(small) < 5


async def test_entries_written_by_one_process_are_hits_for_another(redis_prefix: str) -> None:
    """Two stages on two Redis clients (two API processes): what one stored, the other
    serves; each namespace stays its own, and clearing one leaves the others."""
    one = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
    two = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
    first, second = Upstream(), Upstream()
    try:
        await compose([stage(entries=SharedEntries(one))], first)(make_call())
        await compose([stage(entries=SharedEntries(one))], first)(make_call(key="k9"))
        elsewhere = make_call()
        await compose([stage(entries=SharedEntries(two))], second)(elsewhere)
        assert second.calls == 0 and elsewhere.record.cache == "hit"
        stranger = make_call(key="k2")
        await compose([stage(entries=SharedEntries(two))], second)(stranger)
        assert second.calls == 1 and stranger.record.cache == "miss"
        assert await SharedEntries(two).size() == 3
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_hit_is_recorded_and_costs_no_tokens_against_limits(
    tmp_path: Path, store_url: str
) -> None:
    """Through a Runtime: the hit's row says cache hit, costs 0 and saved the answer's
    price; the key's tokens per minute only count the miss."""
    settings = load_settings(
        data_dir=tmp_path,
        store={"url": store_url},
        models={"m": {"provider": "scripted", "price_input_per_1m": 3,
                      "price_output_per_1m": 15, "cache": {"mode": "exact"}}},
        limits={"tiers": {"pro": {"tokens_per_minute": 100_000}}},
    )  # fmt: skip
    runtime = Runtime(settings)
    await runtime.start()
    try:
        for request_id in ("miss", "hit"):
            await runtime.pipeline(make_call(request_id=request_id))
        (tokens,) = await runtime.state.usage([Limit("{key:k1}:tpm", None, "minute")])
    finally:
        await runtime.aclose()
    rows = {r["request_id"]: r for r in await query(store_url, "SELECT * FROM requests")}
    assert rows["miss"]["cache"] == "miss" and rows["miss"]["cost_usd"] > 0
    assert rows["hit"]["cache"] == "hit" and rows["hit"]["cost_usd"] == 0
    assert rows["hit"]["input_tokens"] == 0 and rows["hit"]["output_tokens"] == 0
    assert rows["hit"]["cache_saved_usd"] == pytest.approx(rows["miss"]["cost_usd"])
    assert tokens.used == rows["miss"]["input_tokens"] + rows["miss"]["output_tokens"]
    saved = runtime.metrics.registry.get_sample_value("guarita_cache_saved_usd_total")
    assert saved == pytest.approx(rows["miss"]["cost_usd"])


async def test_when_every_model_fails_a_stale_entry_answers_at_the_cache_level() -> None:
    """Past its TTL an entry is no hit, but it is the ``cache`` fallback level's answer
    (quality 0.6, no tokens) when the model and its fallbacks all fail."""
    clock = FakeClock(1_000_000)
    cache = stage(clock)
    await compose([cache], Upstream())(make_call())
    clock.advance(3000)  # past the 60 s TTL, within the 3600 s kept stale

    async def down(call: Call) -> Reply:
        raise UpstreamError("the upstream is down")

    chain = FallbackChain({"m": ModelSettings(provider="scripted")}, {},
                          cached=cache.fallback_answer)  # fmt: skip
    call = make_call()
    reply = await compose([cache, chain], down)(call)
    assert reply.fallback_level == FallbackLevel.CACHE and reply.quality == 0.6
    assert reply.text == "answer: What is the capital of France?"
    assert call.record.cache == "miss" and reply.billed_usage == Usage()
    with pytest.raises(UpstreamError):
        await compose([cache, chain], down)(make_call("a question never answered"))
