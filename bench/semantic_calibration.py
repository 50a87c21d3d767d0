"""Calibrate the semantic tier's threshold on the labelled pairs, and measure it on the
held-out ones.

    .venv/bin/python bench/semantic_calibration.py            # wordllama, the default
    .venv/bin/python bench/semantic_calibration.py --build    # pairs*.txt -> pairs.jsonl
    .venv/bin/python bench/semantic_calibration.py --show-served 20

The pairs (``tests/cache/data/pairs.jsonl``, built from the hand-written ``pairs*.txt``)
have a split per question block: the threshold is calibrated on the ``calibration`` split
only (the lowest cosine whose trap rate after verification has a 95 % Wilson upper bound
within the target) and then evaluated on the ``heldout`` split, kind by kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.cache.calibration import (  # noqa: E402
    PAIR_SOURCES,
    POSITIVE_KINDS,
    LabelledPair,
    ScoredPair,
    build_pairs,
    calibrate,
    evaluate,
    load_pairs,
)
from guarita.cache.embedder import WordLlamaEmbedder  # noqa: E402
from guarita.cache.semantic import WORDLLAMA_THRESHOLD, embedding_text  # noqa: E402
from guarita.cache.verify import verify  # noqa: E402

DATA = ROOT / "tests" / "cache" / "data"


def build() -> list[LabelledPair]:
    source = "\n".join((DATA / name).read_text() for name in PAIR_SOURCES)
    return build_pairs(source)


def write_jsonl(pairs: list[LabelledPair]) -> None:
    import json

    with (DATA / "pairs.jsonl").open("w") as out:
        for p in pairs:
            row = {"query": p.query, "candidate": p.candidate, "kind": p.kind, "split": p.split}
            out.write(json.dumps(row) + "\n")


def score(pairs: list[LabelledPair], embedder: WordLlamaEmbedder) -> list[ScoredPair]:
    texts = sorted({t for p in pairs for t in (p.query, p.candidate)})
    started = time.perf_counter()
    vectors = embedder.embed_now([embedding_text(t) for t in texts])
    elapsed = time.perf_counter() - started
    print(f"embedded {len(texts)} texts in {elapsed:.2f} s ({elapsed / len(texts) * 1e6:.0f} "
          "µs per text, batched)")  # fmt: skip
    row = {t: i for i, t in enumerate(texts)}
    out = []
    for p in pairs:
        cosine = float(vectors[row[p.query]] @ vectors[row[p.candidate]])
        out.append(ScoredPair(p.kind, cosine, verify(p.query, p.candidate).ok))
    return out


def report(name: str, scored: list[ScoredPair], threshold: float) -> None:
    e = evaluate(scored, threshold)
    print(f"\n{name} at threshold {threshold:.4f}: served / pairs")
    for kind in sorted(e.total, key=lambda k: (k not in POSITIVE_KINDS, k)):
        print(f"  {kind:12s} {e.served.get(kind, 0):5d} / {e.total[kind]:5d}  "
              f"({e.rate(kind):.1%})")  # fmt: skip
    served, total = e.traps()
    hits, positives = e.positives()
    print(
        f"  traps served {served} / {total} = {served / max(total, 1):.2%}; "
        f"paraphrases served {hits} / {positives} = {hits / max(positives, 1):.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", action="store_true", help="rewrite pairs.jsonl from pairs*.txt")
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--show-served", type=int, default=0, help="print served traps")
    args = parser.parse_args()
    if args.build:
        pairs = build()
        write_jsonl(pairs)
        print(f"wrote {len(pairs)} pairs")
    pairs = load_pairs(DATA / "pairs.jsonl")
    embedder = WordLlamaEmbedder()
    scored = score(pairs, embedder)
    by_split: dict[str, list[tuple[LabelledPair, ScoredPair]]] = {}
    for p, s in zip(pairs, scored, strict=True):
        by_split.setdefault(p.split, []).append((p, s))
    calibration = [s for _, s in by_split["calibration"]]
    result = calibrate(calibration, target=args.target)
    print(f"\ncalibration split: {result}")
    report("calibration split", calibration, result.threshold)
    heldout = by_split.get("heldout", [])
    report("held-out split", [s for _, s in heldout], result.threshold)
    if abs(result.threshold - WORDLLAMA_THRESHOLD) > 0.001:
        print(f"\nnote: the shipped WORDLLAMA_THRESHOLD is {WORDLLAMA_THRESHOLD}")
    if args.show_served:
        shown = 0
        for p, s in heldout + by_split["calibration"]:
            if not s.positive and s.verified and s.score >= result.threshold:
                print(f"  served {p.split} {p.kind}: {p.query!r} ~ {p.candidate!r} "
                      f"({s.score:.3f})")  # fmt: skip
                shown += 1
                if shown >= args.show_served:
                    break
    cosines = np.array([s.score for s in calibration])
    print(f"\ncosines on the calibration split: median {np.median(cosines):.3f}")


if __name__ == "__main__":
    main()
