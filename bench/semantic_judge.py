"""Train, calibrate and measure the semantic tier's judge on the labelled pairs.

    .venv/bin/python bench/semantic_judge.py            # measure the shipped judge (held out)
    .venv/bin/python bench/semantic_judge.py --train    # retrain data/judge.json (scikit-learn)
    .venv/bin/python bench/semantic_judge.py --show 20  # served traps, missed paraphrases
    .venv/bin/python bench/semantic_judge.py --speed    # CPU per judgement

Training sees only the ``calibration`` split of ``tests/cache/data/pairs.jsonl`` (whole
question blocks, so no variant of a held-out question is seen). The threshold is chosen
on *out-of-fold* scores (5 folds grouped by question: each pair scored by trees that never
saw its question) as the lowest whose served traps have a 95 % Wilson upper bound of at
most 1 %; the trees shipped are then fitted on the whole calibration split. A pair counts
as served only if WordLlama also retrieves it (cosine >= the retrieval floor), as in the
tier. The figures printed for the ``heldout`` split are the honest ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.cache.calibration import POSITIVE_KINDS, LabelledPair, load_pairs, wilson_upper  # noqa: E402
from guarita.cache.embedder import WordLlamaEmbedder  # noqa: E402
from guarita.cache.judge import (  # noqa: E402
    FEATURES,
    PairJudge,
    Trees,
    export_trees,
    load_model,
    pair_features,
    same_words,
)
from guarita.cache.semantic import embedding_text  # noqa: E402

PAIRS = ROOT / "tests" / "cache" / "data" / "pairs.jsonl"
MODEL = ROOT / "src" / "guarita" / "cache" / "data" / "judge.json"
RETRIEVAL_FLOOR = 0.5
TARGET = 0.01
PARAMS = {"max_iter": 300, "learning_rate": 0.05, "max_depth": 4, "min_samples_leaf": 30,
          "l2_regularization": 1.0, "random_state": 0}  # fmt: skip


def featurise(pairs: list[LabelledPair], judge: PairJudge, wordllama: WordLlamaEmbedder
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each pair's judge features and its WordLlama cosine (the retrieval score)."""
    texts = sorted({t for p in pairs for t in (p.query, p.candidate)})
    started = time.perf_counter()
    for t in texts:
        judge.encode(t)
    print(f"encoded {len(texts)} texts in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    vectors = wordllama.embed_now([embedding_text(t) for t in texts])
    row = {t: i for i, t in enumerate(texts)}
    retrieval = np.array([float(vectors[row[p.query]] @ vectors[row[p.candidate]]) for p in pairs])
    x = np.stack([pair_features(p.query, p.candidate, judge.encode(p.query),
                                judge.encode(p.candidate), wordllama.embed_now, r)
                  for p, r in zip(pairs, retrieval, strict=True)])  # fmt: skip
    return x, retrieval


def lowest_threshold(scores: np.ndarray, positive: np.ndarray, target: float = TARGET) -> float:
    traps = scores[~positive]
    for t in np.unique(np.concatenate([scores, traps + 1e-9])):
        if wilson_upper(int((traps >= t).sum()), len(traps)) <= target:
            return float(t)
    return 1.0 + 1e-9


def train(x: np.ndarray, retrieval: np.ndarray, pairs: list[LabelledPair]) -> dict[str, Any]:
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GroupKFold

    cal = np.array([p.split == "calibration" for p in pairs])
    y = np.array([p.positive for p in pairs])
    groups = np.array([hashlib.sha256(p.query.encode()).hexdigest() for p in pairs])
    xc, yc, gc, rc = x[cal], y[cal], groups[cal], retrieval[cal]
    oof = np.zeros(len(yc))
    for fit_rows, score_rows in GroupKFold(5).split(xc, yc, gc):
        clf = HistGradientBoostingClassifier(**PARAMS).fit(xc[fit_rows], yc[fit_rows])
        oof[score_rows] = clf.predict_proba(xc[score_rows])[:, 1]
    oof[rc < RETRIEVAL_FLOOR] = 0.0
    oof[[same_words(p.query, p.candidate) for p in np.array(pairs, dtype=object)[cal]]] = 1.0
    threshold = lowest_threshold(oof, yc)
    clf = HistGradientBoostingClassifier(**PARAMS).fit(xc, yc)
    traps = ~yc
    model = {
        "name": "judge-minilm-l6-v2+wordllama-hgb",
        "features": list(FEATURES),
        "threshold": threshold,
        "retrieval_floor": RETRIEVAL_FLOOR,
        "target": TARGET,
        "trained_on": {"pairs": str(PAIRS.relative_to(ROOT)), "split": "calibration",
                       "sha256": hashlib.sha256(PAIRS.read_bytes()).hexdigest(),
                       "scikit_learn": sklearn_version, "params": PARAMS},
        "out_of_fold": {"traps": int(traps.sum()),
                        "traps_served": int(((oof >= threshold) & traps).sum()),
                        "positives": int(yc.sum()),
                        "positives_served": int(((oof >= threshold) & yc).sum())},
        **export_trees(clf),
    }  # fmt: skip
    return model


def measure(model: dict[str, Any], x: np.ndarray, retrieval: np.ndarray,
            pairs: list[LabelledPair], split: str = "heldout"
            ) -> dict[str, dict[str, int]]:  # fmt: skip
    """Served / total per kind on ``split`` with the given judge."""
    trees = Trees(model)
    out: dict[str, dict[str, int]] = {}
    for p, row, r in zip(pairs, x, retrieval, strict=True):
        if p.split != split:
            continue
        served = r >= model["retrieval_floor"] and (
            same_words(p.query, p.candidate) or trees.probability(row) >= model["threshold"]
        )
        counts = out.setdefault(p.kind, {"served": 0, "total": 0})
        counts["total"] += 1
        counts["served"] += int(served)
    return out


def report(title: str, counts: dict[str, dict[str, int]]) -> None:
    print(f"\n{title}: served / pairs")
    for kind in sorted(counts, key=lambda k: (k not in POSITIVE_KINDS, k)):
        c = counts[kind]
        print(f"  {kind:12s} {c['served']:5d} / {c['total']:5d}  ({c['served'] / c['total']:.1%})")
    traps = [c for k, c in counts.items() if k not in POSITIVE_KINDS]
    positives = [c for k, c in counts.items() if k in POSITIVE_KINDS]
    ts, tt = sum(c["served"] for c in traps), sum(c["total"] for c in traps)
    ps, pt = sum(c["served"] for c in positives), sum(c["total"] for c in positives)
    para = counts.get("paraphrase", {"served": 0, "total": 1})
    print(f"  traps served {ts} / {tt} = {ts / tt:.2%} (95 % upper bound "
          f"{wilson_upper(ts, tt):.2%}); paraphrases {para['served'] / para['total']:.1%}; "
          f"paraphrases and near repeats {ps} / {pt} = {ps / pt:.1%}")  # fmt: skip


def speed(judge: PairJudge) -> None:
    judge.score_now("warm", "up", 0.5)
    pairs = [("How do I cancel my subscription?", "What's the way to end my subscription?"),
             ("Reset my password on Android", "How can I reset my Android password?"),
             ("What is the boiling point of water at sea level in Fahrenheit?",
              "At what temperature in Fahrenheit does water boil at sea level?")]  # fmt: skip
    encode, score = [], []
    for i in range(60):
        q, c = pairs[i % len(pairs)]
        q = f"{q} ({i})"
        started = time.process_time()
        judge.encode(q)
        encode.append(time.process_time() - started)
        started = time.process_time()
        judge.score_now(q, c, 0.8)
        score.append(time.process_time() - started)
    for name, xs in (("encode a new text", encode), ("judge (both encoded)", score)):
        a = np.array(xs) * 1000
        print(
            f"  {name:22s} p50 {np.percentile(a, 50):6.2f} ms  "
            f"p95 {np.percentile(a, 95):6.2f} ms CPU"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", action="store_true", help="retrain and write data/judge.json")
    parser.add_argument(
        "--show", type=int, default=0, help="print served traps, missed paraphrases"
    )
    parser.add_argument("--speed", action="store_true")
    args = parser.parse_args()
    wordllama = WordLlamaEmbedder()
    model = load_model() if not args.train else None
    judge = PairJudge(wordllama.embed_now, model=model or _placeholder(), cache_entries=1_000_000)
    if args.speed:
        speed(judge)
        return
    pairs = load_pairs(PAIRS)
    x, retrieval = featurise(pairs, judge, wordllama)
    if args.train:
        model = train(x, retrieval, pairs)
        MODEL.write_text(json.dumps(model, separators=(",", ":")) + "\n")
        print(f"wrote {MODEL.relative_to(ROOT)} ({MODEL.stat().st_size // 1024} KiB); "
              f"threshold {model['threshold']:.4f}; "
              f"out of fold {model['out_of_fold']}")  # fmt: skip
    assert model is not None
    report("calibration split (in sample)", measure(model, x, retrieval, pairs, "calibration"))
    report("held-out split", measure(model, x, retrieval, pairs, "heldout"))
    if args.show:
        trees = Trees(model)
        served_traps, missed = [], []
        for p, row, r in zip(pairs, x, retrieval, strict=True):
            if p.split != "heldout":
                continue
            s = trees.probability(row) if r >= model["retrieval_floor"] else 0.0
            s = 1.0 if same_words(p.query, p.candidate) and r >= model["retrieval_floor"] else s
            if not p.positive and s >= model["threshold"]:
                served_traps.append((s, p))
            elif p.kind == "paraphrase" and s < model["threshold"]:
                missed.append((s, p))
        for title, rows in (("served traps", served_traps), ("missed paraphrases", missed)):
            print(f"\n{title}:")
            for s, p in rows[: args.show]:
                print(f"  {s:.3f} {p.kind}: {p.query!r} ~ {p.candidate!r}")


def _placeholder() -> dict[str, Any]:
    """A judge that accepts nothing (to encode with before the first training)."""
    return {"name": "untrained", "features": list(FEATURES), "threshold": 2.0,
            "retrieval_floor": RETRIEVAL_FLOOR, "nodes": {"feature": [0], "threshold": [0.0],
            "left": [0], "right": [0], "value": [0.0], "leaf": [True]}, "roots": [0],
            "depth": 0, "baseline": 0.0}  # fmt: skip


if __name__ == "__main__":
    main()
