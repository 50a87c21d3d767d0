"""The semantic tier: a verified similar question is served, a trap never; groups keep
namespaces and contexts apart; the index is bounded; entries are shared through Redis;
the shipped threshold is what the calibration pairs give. The embedder is the real local
WordLlama model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from guarita.cache.calibration import ScoredPair, calibrate, load_pairs
from guarita.cache.embedder import CachedEmbedder, WordLlamaEmbedder
from guarita.cache.exact import LocalEntries, SharedEntries
from guarita.cache.index import HNSW_FROM, SemanticEntry, VectorIndex
from guarita.cache.semantic import (
    WORDLLAMA_THRESHOLD,
    SemanticTier,
    embedding_text,
    question_of,
)
from guarita.cache.verify import verify
from guarita.pipeline import compose
from guarita.pipeline.cache import ResponseCache
from guarita.settings import ResponseCachePolicy
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState
from tests.helpers import REDIS_URL, wait_until_async
from tests.pipeline.test_cache import PRICE, Upstream, make_call, read

SEMANTIC = ResponseCachePolicy(mode="semantic", ttl_s=60)
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def wordllama() -> Iterator[WordLlamaEmbedder]:
    yield WordLlamaEmbedder()


def tier(embedder: WordLlamaEmbedder, state: RedisSharedState | None = None,
         max_entries: int = 1000) -> SemanticTier:  # fmt: skip
    return SemanticTier(embedder=CachedEmbedder(embedder), index=VectorIndex(256, max_entries),
                        threshold=WORDLLAMA_THRESHOLD, state=state)  # fmt: skip


def stage(semantic: SemanticTier, entries: object = None) -> ResponseCache:
    return ResponseCache(
        models={"m": SEMANTIC}, agents={},
        entries=entries if entries is not None else LocalEntries(max_entries=100,
                                                                  max_bytes=1_000_000),
        prices={"m": PRICE}, stale_s=3600, max_entry_bytes=100_000, semantic=semantic,
    )  # fmt: skip


async def test_a_near_repeat_is_a_semantic_hit_and_a_trap_is_not(
    wordllama: WordLlamaEmbedder,
) -> None:
    upstream = Upstream()
    cache = stage(tier(wordllama))
    pipeline = compose([cache], upstream)
    await pipeline(make_call("How do I cancel my subscription?"))
    again = make_call("how do i cancel my subscription")
    hit = await pipeline(again)
    assert upstream.calls == 1
    assert again.response_headers["x-guarita-cache"] == "semantic-hit"
    assert again.record.cache == "semantic-hit" and hit.cache == "semantic-hit"
    assert hit.text == "answer: How do I cancel my subscription?"
    assert again.record.cache_similarity is not None
    assert again.record.cache_similarity >= WORDLLAMA_THRESHOLD
    assert again.record.cache_saved_usd > 0
    for trap in ("How do I not cancel my subscription?", "how do i cancel my subscriptions",
                 "How do I cancel my Netflix subscription?"):  # fmt: skip
        call = make_call(trap)
        await pipeline(call)
        assert call.record.cache == "miss", trap
    assert upstream.calls == 4
    assert cache.lookups["semantic-hit"] == 1
    stats = await cache.stats()
    assert (
        stats["semantic"]["indexed"] == 4 and stats["semantic"]["threshold"] == WORDLLAMA_THRESHOLD
    )


async def test_no_semantic_hit_across_namespaces_or_contexts(wordllama: WordLlamaEmbedder) -> None:
    upstream = Upstream()
    pipeline = compose([stage(tier(wordllama))], upstream)
    await pipeline(make_call("What is the capital of France?"))
    other_key = make_call("what is the capital of  France?", key="k2")
    await pipeline(other_key)
    assert other_key.record.cache == "miss"
    system = make_call("what is the capital of  France?")
    system.body["messages"].insert(0, {"role": "system", "content": "Answer in French."})
    await pipeline(system)
    assert system.record.cache == "miss"
    warmer = make_call("what is the capital of  France?", temperature=0.5)
    await pipeline(warmer)
    assert warmer.record.cache == "miss"
    assert upstream.calls == 4
    same = make_call("what is the capital of  France?")
    await pipeline(same)
    assert same.record.cache == "semantic-hit" and upstream.calls == 4


async def test_a_semantic_hit_needs_the_answer_still_there(wordllama: WordLlamaEmbedder) -> None:
    upstream = Upstream()
    cache = stage(tier(wordllama))
    pipeline = compose([cache], upstream)
    await pipeline(make_call("How do I reset my password?"))
    await cache.clear("key:k1")
    assert len(cache.semantic.index) == 0  # type: ignore[union-attr]
    call = make_call("how do i reset my password")
    await pipeline(call)
    assert call.record.cache == "miss" and upstream.calls == 2


async def test_a_streamed_semantic_hit_replays_the_answer(wordllama: WordLlamaEmbedder) -> None:
    upstream = Upstream()
    pipeline = compose([stage(tier(wordllama))], upstream)
    miss, _ = await read(pipeline, make_call("Where is my order?", stream=True))
    assert miss.finish_reason == "stop"
    again = make_call("where is my order?", stream=True)
    hit, chunks = await read(pipeline, again)
    assert again.record.cache == "semantic-hit" and hit.text == "answer: Where is my order?"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert upstream.calls == 1


async def test_a_verified_similar_answer_is_the_cache_fallback_level(
    wordllama: WordLlamaEmbedder,
) -> None:
    cache = stage(tier(wordllama))
    upstream = Upstream()
    await compose([cache], upstream)(make_call("How do I export my data?"))
    call = make_call("how do i export my data?")
    answer = await cache.fallback_answer(call)
    assert answer is not None and answer.text == "answer: How do I export my data?"
    assert await cache.fallback_answer(make_call("How do I import my data?")) is None


async def test_semantic_entries_are_shared_through_redis(
    wordllama: WordLlamaEmbedder, redis_prefix: str
) -> None:
    """Two stages on two Redis clients (two API processes): an answer one indexed is a
    semantic hit for the other, published at once; a process started later loads it; a
    clear in one reaches the other."""
    one = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
    two = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
    three = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
    tiers = [tier(wordllama, state) for state in (one, two)]
    try:
        for t in tiers:
            await t.start()
        first, second = Upstream(), Upstream()
        await compose([stage(tiers[0], SharedEntries(one))], first)(
            make_call("How do I change my billing address?")
        )
        await wait_until_async(lambda: len(tiers[1].index) == 1, what="the shared entry")
        call = make_call("how do i change my billing address")
        await compose([stage(tiers[1], SharedEntries(two))], second)(call)
        assert call.record.cache == "semantic-hit" and second.calls == 0
        late = tier(wordllama, three)
        await late.start()
        await wait_until_async(lambda: len(late.index) == 1, what="the entries loaded")
        await tiers[0].clear(None)
        await wait_until_async(lambda: len(tiers[1].index) == 0 and len(late.index) == 0,
                               what="the clear everywhere")  # fmt: skip
        await late.aclose()
    finally:
        for t in tiers:
            await t.aclose()
        for state in (one, two, three):
            await state.aclose()


async def test_the_embedding_cache_embeds_a_text_once(wordllama: WordLlamaEmbedder) -> None:
    state = MemorySharedState()
    first = CachedEmbedder(wordllama, max_entries=2, shared=state)
    a = await first.embed(["one text", "another text"])
    again = await first.embed(["one text"])
    assert first.misses == 2 and first.hits == 1
    assert np.allclose(a[0], again[0])
    second = CachedEmbedder(wordllama, shared=state)  # another process, the same state
    await second.embed(["another text"])
    assert second.hits == 1 and second.misses == 0
    await first.embed(["a third", "a fourth"])
    assert len(first) == 2  # bounded


def test_the_index_is_bounded_and_moves_large_groups_to_hnsw() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((HNSW_FROM + 10, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(32, max_entries=HNSW_FROM + 5)
    for i, v in enumerate(vectors):
        index.add("g", v, SemanticEntry(f"q{i}", f"k{i}", 1e12, 1e12))
    assert len(index) == HNSW_FROM + 5 and index.evicted == 5
    found = index.search("g", vectors[100], 3)
    assert found[0].entry.key == "k100" and found[0].score == pytest.approx(1.0, abs=2e-3)
    assert [c.entry.key for c in index.search("g", vectors[2], 3)][:1] != ["k2"]  # evicted
    assert index.search("other", vectors[100]) == []
    assert index.remove_prefix("g") == HNSW_FROM + 5 and len(index) == 0
    with pytest.raises(ValueError, match="dims"):
        index.add("g", np.zeros(4, dtype=np.float32), SemanticEntry("q", "k", 1, 1))


def test_the_question_is_the_last_user_text() -> None:
    assert question_of({"messages": [{"role": "user", "content": "Hi there"}]}) == "Hi there"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert question_of({"messages": [{"role": "user", "content": parts}]}) == "a\nb"
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    assert question_of({"messages": [{"role": "user", "content": image}]}) is None
    assert question_of({"messages": [{"role": "assistant", "content": "x"}]}) is None
    assert question_of({"messages": []}) is None
    assert embedding_text("  How  DO I ") == "how do i"


def test_the_shipped_threshold_is_what_the_calibration_pairs_give(
    wordllama: WordLlamaEmbedder,
) -> None:
    pairs = [p for p in load_pairs(DATA / "pairs.jsonl") if p.split == "calibration"]
    texts = sorted({t for p in pairs for t in (p.query, p.candidate)})
    vectors = wordllama.embed_now([embedding_text(t) for t in texts])
    row = {t: i for i, t in enumerate(texts)}
    scored = [
        ScoredPair(p.kind, float(vectors[row[p.query]] @ vectors[row[p.candidate]]),
                   verify(p.query, p.candidate).ok)
        for p in pairs
    ]  # fmt: skip
    result = calibrate(scored, target=0.01)
    assert result.feasible
    assert result.threshold <= WORDLLAMA_THRESHOLD <= result.threshold + 0.002
