"""The judge: a learned decision that a cached question asks what the new one asks.

A cosine threshold, even with the rule verifier behind it, either serves traps or almost
no paraphrases: on our labelled pairs, "How do I cancel my subscription?" and "How do I
keep my subscription?" are as close as it and "What's the way to end my subscription?"
under every embedder we tried, and the verifier's word lists reject most real rewordings
("reschedule" / "move", "98.6 F" / "37 C"). The judge reads a pair the way a reviewer
would, with three kinds of evidence:

* **all-MiniLM-L6-v2** (:mod:`guarita.cache.minilm`): the sentence cosine, and how well
  every word piece of one text finds a counterpart among the other's contextual token
  states (min and mean, both ways) — a negator, a number or a name with no counterpart
  pulls these down even when the sentence vectors agree;
* **the verifier's checks**, each on its own (:func:`guarita.cache.verify.differences`):
  negation parity, opposite actions, numbers, dates, roles swapped, names, scope,
  singular/plural, content words on one side only;
* **how far the substituted words are**: WordLlama's cosine between the content words
  that only one side has ("reschedule" ~ "move" is near, "password" ~ "router" is not).

A small gradient-boosted tree ensemble (trained by ``bench/semantic_judge.py`` on the
calibration split of ``tests/cache/data/pairs.jsonl``, stored as plain JSON in
``data/judge.json``, no pickle) turns the 25 features into a probability, and the pair is
served only above a threshold calibrated on out-of-fold scores so that the 95 % upper
Wilson bound of served traps is at most 1 %.

Cost: the features are a few hundred microseconds; the encoder is ~8-12 ms per text not
seen before (an LRU keeps recent encodings), so the tier judges only the few candidates
that WordLlama retrieved above :attr:`PairJudge.retrieval_floor`, on a thread of its own,
and skips the semantic lookup (an exact-only miss) when too many judgements wait.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from guarita.cache.lexicon import FILLERS
from guarita.cache.minilm import Encoded, MiniLM
from guarita.cache.verify import differences

__all__ = [
    "FEATURES",
    "Judgement",
    "PairJudge",
    "Trees",
    "export_trees",
    "judge_text",
    "pair_features",
]

FEATURES = (
    "cosine", "query_min", "candidate_min", "query_mean", "candidate_mean",
    "negation", "poles", "numbers", "number_order", "dates", "swap", "entities", "scope",
    "plural", "unmatched", "unmatched_min", "shared_share", "substitution", "plain_equal",
    "query_words_near", "candidate_words_near", "query_covered", "candidate_covered",
    "verified", "retrieval",
)  # fmt: skip
"""The judge's inputs, in the order its trees index them."""

WordVectors = Callable[[Sequence[str]], np.ndarray]
"""Unit word vectors for a list of words (WordLlama's ``embed_now``)."""


def pair_features(
    query: str, candidate: str, q: Encoded, c: Encoded, words: WordVectors, retrieval: float
) -> np.ndarray:
    """The :data:`FEATURES` of a pair, as float64 (the one definition training and serving
    share); ``retrieval`` is WordLlama's cosine of the pair (the index's score)."""
    sim = q.tokens @ c.tokens.T
    query_best, candidate_best = sim.max(axis=1), sim.max(axis=0)
    d = differences(query, candidate)
    only_q, only_c = d.only_query, d.only_candidate
    return np.array(
        [
            float(q.pooled @ c.pooled),
            float(query_best.min()), float(candidate_best.min()),
            float(query_best.mean()), float(candidate_best.mean()),
            d.negation, d.poles, d.numbers, d.number_order, d.dates, d.swap, d.entities,
            d.scope, d.plural,
            len(only_q) + len(only_c), min(len(only_q), len(only_c)),
            d.shared / max(1, d.content_words),
            d.substitution, d.plain_equal,
            _nearest(only_q, only_c, words), _nearest(only_c, only_q, words),
            not only_q, not only_c,
            d.verified, retrieval,
        ],
        dtype=np.float64,
    )  # fmt: skip


_FILLER = re.compile(r"\b(?:" + "|".join(sorted(FILLERS)) + r")\b", re.I)


def judge_text(text: str) -> str:
    """What the encoder reads of a question: without greetings, "please" or punctuation,
    which change nothing asked but leave word pieces with no counterpart."""
    return " ".join(_FILLER.sub(" ", text.lower()).split()) or text.lower()


_PUNCTUATION = re.compile(r"(?<!\d)[.,]|[.,](?!\d)|[;:?\"'\u2019]|!(?!=)")


def same_words(query: str, candidate: str) -> bool:
    """The same words and symbols in the same order once case, punctuation, apostrophes
    and greetings are set aside: a repeat, accepted without the model ("3x + 7" and
    "3x - 7" differ)."""
    a = _PUNCTUATION.sub(" ", judge_text(query)).split()
    return bool(a) and a == _PUNCTUATION.sub(" ", judge_text(candidate)).split()


def _nearest(words: Sequence[str], others: Sequence[str], vectors: WordVectors) -> float:
    """The worst-placed word's cosine to its nearest other word (1 with nothing to place,
    0 with nothing to place it near)."""
    if not words:
        return 1.0
    if not others:
        return 0.0
    a, b = vectors(list(words)), vectors(list(others))
    return float((a @ b.T).max(axis=1).min())


def export_trees(clf: Any) -> dict[str, Any]:
    """A fitted scikit-learn ``HistGradientBoostingClassifier`` (binary) as the plain
    arrays :class:`Trees` reads (training only: scikit-learn is not needed to serve)."""
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    value: list[float] = []
    leaf: list[bool] = []
    roots = []
    depth = 0
    for (predictor,) in clf._predictors:
        nodes = predictor.nodes
        base = len(feature)
        roots.append(base)
        for n in nodes:
            feature.append(int(n["feature_idx"]))
            threshold.append(float(n["num_threshold"]))
            left.append(base + int(n["left"]))
            right.append(base + int(n["right"]))
            value.append(float(n["value"]))
            leaf.append(bool(n["is_leaf"]))
            depth = max(depth, int(n["depth"]))
    return {"nodes": {"feature": feature, "threshold": threshold, "left": left, "right": right,
                      "value": value, "leaf": leaf},
            "roots": roots, "depth": depth,
            "baseline": float(np.ravel(clf._baseline_prediction)[0])}  # fmt: skip


class Trees:
    """A binary classifier's boosted regression trees, evaluated level by level over all
    trees at once (a handful of NumPy operations per pair)."""

    def __init__(self, model: dict[str, Any]) -> None:
        nodes = model["nodes"]
        self.feature = np.asarray(nodes["feature"], dtype=np.intp)
        self.threshold = np.asarray(nodes["threshold"], dtype=np.float64)
        self.left = np.asarray(nodes["left"], dtype=np.intp)
        self.right = np.asarray(nodes["right"], dtype=np.intp)
        self.value = np.asarray(nodes["value"], dtype=np.float64)
        self.leaf = np.asarray(nodes["leaf"], dtype=bool)
        self.roots = np.asarray(model["roots"], dtype=np.intp)
        self.depth = int(model["depth"])
        self.baseline = float(model["baseline"])
        # a leaf points to itself, so walking past it stays put
        idx = np.arange(len(self.leaf))
        self.left = np.where(self.leaf, idx, self.left)
        self.right = np.where(self.leaf, idx, self.right)

    def probability(self, x: np.ndarray) -> float:
        node = self.roots
        for _ in range(self.depth):
            go_left = x[self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        raw = self.baseline + float(self.value[node].sum())
        return 1.0 / (1.0 + math.exp(-raw))


@dataclass(frozen=True, slots=True)
class Judgement:
    score: float
    accepted: bool


class PairJudge:
    """Encodes and judges pairs on a thread of its own (see the module docstring)."""

    def __init__(
        self,
        words: WordVectors,
        *,
        encoder: MiniLM | None = None,
        model: dict[str, Any] | None = None,
        threshold: float | None = None,
        cache_entries: int = 4096,
        max_pending: int = 8,
    ) -> None:
        self._embed_words = words
        self._word_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._encoder = encoder
        model = model if model is not None else load_model()
        self.trees = Trees(model)
        self.threshold = float(model["threshold"] if threshold is None else threshold)
        self.retrieval_floor = float(model["retrieval_floor"])
        """The WordLlama cosine below which a candidate is not judged (a near-certain miss)."""
        self.name = str(model["name"])
        self._cache: OrderedDict[str, Encoded] = OrderedDict()
        self._cache_entries = cache_entries
        self._max_pending = max_pending
        self._pending = 0
        self._thread: ThreadPoolExecutor | None = None
        self.busy = 0
        """Lookups skipped because ``max_pending`` judgements were already waiting."""

    @property
    def encoder(self) -> MiniLM:
        if self._encoder is None:
            self._encoder = MiniLM()
        return self._encoder

    def encode(self, text: str) -> Encoded:
        found = self._cache.get(text)
        if found is not None:
            self._cache.move_to_end(text)
            return found
        encoded = self.encoder.encode(judge_text(text))
        self._cache[text] = encoded
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return encoded

    def _words(self, words: Sequence[str]) -> np.ndarray:
        """Word vectors, each word embedded once (WordLlama's tokenizer costs more than
        its lookup, and the same words come back)."""
        unseen = [w for w in dict.fromkeys(words) if w not in self._word_vectors]
        if unseen:
            for word, vector in zip(unseen, self._embed_words(unseen), strict=True):
                self._word_vectors[word] = vector
            while len(self._word_vectors) > 8 * self._cache_entries:
                self._word_vectors.popitem(last=False)
        return np.stack([self._word_vectors[w] for w in words])

    def score_now(self, query: str, candidate: str, retrieval: float) -> float:
        """The probability that ``candidate``'s answer answers ``query`` (calling thread);
        ``retrieval`` is their WordLlama cosine."""
        x = pair_features(query, candidate, self.encode(query), self.encode(candidate),
                          self._words, retrieval)  # fmt: skip
        return self.trees.probability(x)

    def judge_now(
        self, query: str, candidates: Sequence[tuple[str, float]], *, first: bool = False
    ) -> list[Judgement]:
        """Each ``(text, retrieval cosine)`` candidate judged against ``query``; with
        ``first``, only up to the first accepted (each judgement may cost an encoding)."""
        out = []
        for candidate, retrieval in candidates:
            if same_words(query, candidate):
                score = 1.0
            else:
                score = self.score_now(query, candidate, retrieval)
            out.append(Judgement(score, score >= self.threshold))
            if first and out[-1].accepted:
                break
        return out

    async def judge(
        self, query: str, candidates: Sequence[tuple[str, float]], *, first: bool = False
    ) -> list[Judgement] | None:
        """The candidates' judgements (see :meth:`judge_now`), or None when the judge is
        saturated (the caller treats the request as a semantic miss rather than queueing
        behind others)."""
        if self._pending >= self._max_pending:
            self.busy += 1
            return None
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor(), functools.partial(self.judge_now, query, list(candidates),
                                                first=first)
            )  # fmt: skip
        finally:
            self._pending -= 1

    def warm(self) -> None:
        """Load the encoder now (at start, not on the first lookup)."""
        self.encode("warm up")

    def _executor(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="guarita-judge")
        return self._thread

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor(), self.warm)

    async def aclose(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None


def load_model() -> dict[str, Any]:
    """The shipped judge (``data/judge.json``)."""
    text = resources.files("guarita.cache").joinpath("data/judge.json").read_text()
    model: dict[str, Any] = json.loads(text)
    if tuple(model["features"]) != FEATURES:
        raise ValueError("data/judge.json was trained on other features; retrain it")
    return model
