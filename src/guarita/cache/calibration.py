"""Calibrating the similarity threshold for a target false-hit rate, and the labelled pairs.

A pair is a query and a cached question with a label: a *paraphrase* (or near repeat) must
be served, a *trap* (negation, number, date, entity, scope, swapped roles, unrelated) must
not. A pair is **served** at threshold ``t`` when its cosine is ``>= t`` *and* the verifier
accepts it. :func:`calibrate` picks the lowest threshold (the most paraphrase hits) whose
trap rate, taken as the one-sided upper bound of a Wilson score interval (not the point
estimate), is at most the target. With ``n`` traps the bound cannot fall below
``z^2 / (n + z^2)`` even when none is served: if the target is out of reach with the pairs
given, the result says ``feasible=False`` and keeps the lowest threshold at which no trap is
served at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

__all__ = [
    "PAIR_SOURCES",
    "POSITIVE_KINDS",
    "Calibration",
    "LabelledPair",
    "ScoredPair",
    "build_pairs",
    "calibrate",
    "evaluate",
    "load_pairs",
    "wilson_upper",
]

POSITIVE_KINDS = frozenset({"paraphrase", "near_repeat"})
PAIR_SOURCES = ("pairs.txt", "pairs_more.txt", "pairs_extra.txt", "pairs_fourth.txt")
"""The hand-written files of ``tests/cache/data`` that ``pairs.jsonl`` is built from, in order."""
KIND_CODES = {
    "P": "paraphrase",
    "R": "near_repeat",
    "N": "negation",
    "U": "number",
    "D": "date",
    "E": "entity",
    "S": "scope",
    "W": "swap",
    "X": "unrelated",
}


@dataclass(frozen=True, slots=True)
class LabelledPair:
    query: str
    candidate: str
    kind: str
    split: str  # "calibration" or "heldout"

    @property
    def positive(self) -> bool:
        return self.kind in POSITIVE_KINDS


@dataclass(frozen=True, slots=True)
class ScoredPair:
    """A labelled pair with its cosine and the verifier's verdict."""

    kind: str
    score: float
    verified: bool

    @property
    def positive(self) -> bool:
        return self.kind in POSITIVE_KINDS


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float
    traps: int
    traps_served: int
    trap_rate_upper: float
    positives: int
    positives_served: int
    feasible: bool
    target: float
    confidence: float

    @property
    def hit_rate(self) -> float:
        return self.positives_served / self.positives if self.positives else 0.0


@dataclass(slots=True)
class Evaluation:
    threshold: float
    served: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def rate(self, kind: str) -> float:
        return self.served.get(kind, 0) / self.total[kind] if self.total.get(kind) else 0.0

    def traps(self) -> tuple[int, int]:
        kinds = [k for k in self.total if k not in POSITIVE_KINDS]
        return sum(self.served.get(k, 0) for k in kinds), sum(self.total[k] for k in kinds)

    def positives(self) -> tuple[int, int]:
        kinds = [k for k in self.total if k in POSITIVE_KINDS]
        return sum(self.served.get(k, 0) for k in kinds), sum(self.total[k] for k in kinds)


def wilson_upper(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper bound of the Wilson score interval for a rate ``successes / n``."""
    if n <= 0:
        return 1.0
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / denom)


def calibrate(
    pairs: Sequence[ScoredPair],
    target: float = 0.01,
    confidence: float = 0.95,
    floor_kinds: Iterable[str] = ("unrelated",),
) -> Calibration:
    """The lowest threshold whose trap rate (upper Wilson bound) is at most ``target``.

    Two conditions, the stricter wins: traps served after verification, and — so that
    the embedding still guards against what the verifier misses — the ``floor_kinds``
    traps (unrelated questions) served by the cosine alone, verifier ignored.
    """
    pairs = list(pairs)
    floor = [ScoredPair(p.kind, p.score, True) for p in pairs if p.kind in set(floor_kinds)]
    main = _calibrate(pairs, target, confidence)
    if not floor:
        return main
    floor_t = _calibrate(floor, target, confidence).threshold
    if floor_t <= main.threshold:
        return main
    return _at(pairs, floor_t, target, confidence, main.feasible)


def _at(
    pairs: Sequence[ScoredPair], threshold: float, target: float, confidence: float, feasible: bool
) -> Calibration:
    traps = [p for p in pairs if not p.positive]
    positives = [p for p in pairs if p.positive]
    served = sum(1 for p in traps if p.verified and p.score >= threshold)
    upper = wilson_upper(served, len(traps), confidence)
    return Calibration(
        threshold=threshold,
        traps=len(traps),
        traps_served=served,
        trap_rate_upper=upper,
        positives=len(positives),
        positives_served=sum(1 for p in positives if p.verified and p.score >= threshold),
        feasible=feasible and upper <= target,
        target=target,
        confidence=confidence,
    )


def _calibrate(pairs: Sequence[ScoredPair], target: float, confidence: float) -> Calibration:
    traps = [p for p in pairs if not p.positive]
    positives = [p for p in pairs if p.positive]
    # thresholds just above each trap score (and each score itself): ">= t" is served
    candidates = sorted({p.score for p in pairs} | {p.score + 1e-6 for p in traps} | {1.0 + 1e-6})
    best: Calibration | None = None
    zero_served: Calibration | None = None
    for threshold in candidates:  # ascending: the first that qualifies is the lowest
        served = sum(1 for p in traps if p.verified and p.score >= threshold)
        upper = wilson_upper(served, len(traps), confidence)
        result = Calibration(
            threshold=threshold,
            traps=len(traps),
            traps_served=served,
            trap_rate_upper=upper,
            positives=len(positives),
            positives_served=sum(1 for p in positives if p.verified and p.score >= threshold),
            feasible=upper <= target,
            target=target,
            confidence=confidence,
        )
        if result.feasible:
            best = result
            break
        if served == 0 and zero_served is None:
            zero_served = result
    if best is not None:
        return best
    assert zero_served is not None  # the last candidate is above every score
    return zero_served


def evaluate(pairs: Iterable[ScoredPair], threshold: float) -> Evaluation:
    """Served counts per kind at ``threshold`` (cosine ``>=`` threshold and verified)."""
    out = Evaluation(threshold)
    for p in pairs:
        out.total[p.kind] = out.total.get(p.kind, 0) + 1
        if p.verified and p.score >= threshold:
            out.served[p.kind] = out.served.get(p.kind, 0) + 1
    return out


def _split_of(question: str, heldout_share: float) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    return "heldout" if digest[0] / 256 < heldout_share else "calibration"


def build_pairs(
    source: str, heldout_share: float = 0.4, unrelated_per_block: int = 3, seed: int = 7
) -> list[LabelledPair]:
    """Pairs from the hand-written block format of ``tests/cache/data/pairs.txt``.

    Each block (a question and its variants) goes whole to one split, chosen by a hash of
    the question, so no paraphrase of a held-out question is seen at calibration. Besides
    the written ``X`` lines, each question is paired with ``unrelated_per_block`` questions
    of other blocks of the same split (unrelated traps).
    """
    blocks: list[tuple[str, list[tuple[str, str]]]] = []
    for raw in source.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        code, _, text = line.partition(":")
        text = text.strip()
        if code == "Q":
            blocks.append((text, []))
        elif code in KIND_CODES and blocks:
            blocks[-1][1].append((KIND_CODES[code], text))
        else:
            raise ValueError(f"bad line: {raw!r}")
    pairs: list[LabelledPair] = []
    by_split: dict[str, list[str]] = {}
    for question, variants in blocks:
        split = _split_of(question, heldout_share)
        by_split.setdefault(split, []).append(question)
        pairs.extend(LabelledPair(question, text, kind, split) for kind, text in variants)
    rng = random.Random(seed)
    for split, questions in sorted(by_split.items()):
        for question in questions:
            others = [q for q in questions if q != question]
            for other in rng.sample(others, min(unrelated_per_block, len(others))):
                pairs.append(LabelledPair(question, other, "unrelated", split))
    return pairs


def load_pairs(path: Path) -> list[LabelledPair]:
    """Pairs from a JSONL file of ``{"query", "candidate", "kind", "split"}`` objects."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(LabelledPair(row["query"], row["candidate"], row["kind"], row["split"]))
    return out
