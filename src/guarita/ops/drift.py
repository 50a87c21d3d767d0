"""Behavioural drift: is a window of answers' embeddings drawn from the baseline window's
distribution? Two two-sample tests and a graded recommendation (docs/observability.md).

* MMD² (unbiased) with a Gaussian kernel whose bandwidth is the median pairwise distance
  of the pooled sample, with a permutation p-value: sensitive to any change of
  distribution, not only of the mean.
* A classifier check: a ridge classifier (dual form, on the centred pooled vectors) told
  to separate baseline from current, its balanced accuracy held out by stratified k-fold
  cross-validation, with a permutation p-value (labels shuffled, the same folds). Its
  ``score`` = ``max(0, 2 x balanced accuracy - 1)`` is a lower bound on the total
  variation distance between the two windows: 0 for the same behaviour, 1 when every
  answer tells which window it came from. It is the drift score we report.

A permutation p-value is calibrated by construction on baseline-versus-baseline splits:
under no drift every split of the pooled windows is as likely as the observed one, so a
test at level ``alpha`` raises at most ``alpha`` false alarms. The grades
(:func:`grade`) follow the source document's MONITOR / WARNING / URGENT:

* ``monitor``: one test of the two significant at ``alpha`` (false alarms at most
  2 x ``alpha``; not an alarm, a note to watch);
* ``warning``: both significant (at most ``alpha`` false alarms, 0.05 by default;
  ``bench/drift_power.py`` measures the rate on real answers);
* ``urgent_rollback``: both significant and a score of at least ``urgent_score`` (0.3,
  the document's threshold for "consider immediate rollback").

Deterministic given ``seed``. numpy only (the ``semantic`` extra), imported lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MIN_SAMPLES = 8
"""Fewer vectors than this in either window: no test (k-fold needs a few per class)."""


class DriftLevel(IntEnum):
    """The recommendation, in increasing order of urgency (the metric's value)."""

    NO_ACTION = 0
    MONITOR = 1
    WARNING = 2
    URGENT_ROLLBACK = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> DriftLevel:
        return cls[label.upper()]


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    alpha: float = 0.05
    """Significance of each test (the warning level's false-alarm bound)."""
    urgent_score: float = 0.3
    """The drift score (total-variation lower bound) from which a warning is urgent."""


@dataclass(frozen=True, slots=True)
class DriftReport:
    n_baseline: int
    n_current: int
    mmd2: float
    mmd_p: float
    bandwidth: float
    accuracy: float
    """The classifier's held-out balanced accuracy (0.5 is chance)."""
    classifier_p: float
    score: float
    """``max(0, 2 x accuracy - 1)``: a lower bound on the total variation distance."""
    centroid_shift: float
    """1 - cosine of the two windows' mean vectors (the document's ``semantic_shift``)."""
    level: DriftLevel

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["level"] = self.level.label
        for name, value in out.items():
            if isinstance(value, float):
                out[name] = float(f"{value:.6g}")
        return out


def _np() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError('drift detection needs numpy: pip install "guarita[semantic]"') from exc
    return numpy


def _sq_distances(z: np.ndarray) -> Any:
    np = _np()
    norms = np.einsum("ij,ij->i", z, z)
    d2 = norms[:, None] + norms[None, :] - 2.0 * (z @ z.T)
    return np.maximum(d2, 0.0)


def _mmd2_columns(k0: np.ndarray, s: np.ndarray, m: int, n: int) -> Any:
    """Unbiased MMD² for each column of ``s`` (1 marks a baseline vector), ``k0`` the
    kernel matrix with a zero diagonal."""
    np = _np()
    t = 1.0 - s
    ks = k0 @ s
    rows = k0.sum(axis=1)[:, None]
    xx = np.einsum("ij,ij->j", s, ks)
    xy = np.einsum("ij,ij->j", s, rows - ks)
    yy = np.einsum("ij,ij->j", t, rows - ks)
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def mmd_test(
    baseline: np.ndarray, current: np.ndarray, *, permutations: int, rng: Any
) -> tuple[float, float, float]:
    """(MMD², permutation p-value, bandwidth)."""
    np = _np()
    m, n = len(baseline), len(current)
    z = np.vstack([baseline, current]).astype(np.float64)
    d2 = _sq_distances(z)
    upper = d2[np.triu_indices(len(z), k=1)]
    positive = upper[upper > 0]
    bandwidth = float(np.sqrt(np.median(positive))) if len(positive) else 1.0
    k0 = np.exp(-d2 / (2.0 * bandwidth**2))
    np.fill_diagonal(k0, 0.0)
    labels = np.zeros((m + n, permutations + 1))
    labels[:m, 0] = 1.0
    for j in range(1, permutations + 1):
        labels[rng.permutation(m + n)[:m], j] = 1.0
    stats = _mmd2_columns(k0, labels, m, n)
    p = (1 + int(np.sum(stats[1:] >= stats[0]))) / (permutations + 1)
    return float(stats[0]), p, bandwidth


def _folds(m: int, n: int, k: int, rng: Any) -> list[np.ndarray]:
    """Stratified folds: each fold takes its share of each window."""
    np = _np()
    k = max(2, min(k, m, n))
    parts: list[list[int]] = [[] for _ in range(k)]
    for start, size in ((0, m), (m, n)):
        for i, index in enumerate(rng.permutation(size)):
            parts[i % k].append(start + int(index))
    return [np.array(sorted(p)) for p in parts]


def classifier_test(
    baseline: np.ndarray,
    current: np.ndarray,
    *,
    permutations: int,
    rng: Any,
    folds: int = 5,
    ridge: float = 1.0,
) -> tuple[float, float]:
    """(held-out balanced accuracy, permutation p-value) of a ridge classifier.

    The dual solution is linear in the labels, so each fold's held-out predictions are one
    matrix (``H = K[test, train] (K[train, train] + ridge I)^-1``) applied to every label
    permutation at once: the whole permutation test costs a few small matrix products.
    """
    np = _np()
    m, n = len(baseline), len(current)
    z = np.vstack([baseline, current]).astype(np.float64)
    z -= z.mean(axis=0)
    gram = z @ z.T
    scale = ridge * float(np.trace(gram)) / len(z)
    labels = np.zeros((m + n, permutations + 1))
    labels[m:, 0] = 1.0
    for j in range(1, permutations + 1):
        labels[rng.permutation(m + n)[:n], j] = 1.0
    hits_current = np.zeros(permutations + 1)
    hits_baseline = np.zeros(permutations + 1)
    everyone = np.arange(m + n)
    for test in _folds(m, n, folds, rng):
        train = np.setdiff1d(everyone, test)
        a = gram[np.ix_(train, train)] + scale * np.eye(len(train))
        hat = np.linalg.solve(a, gram[np.ix_(train, test)]).T
        y = labels[train]
        predicted = hat @ (y - y.mean(axis=0)) > 0
        truth = labels[test] > 0.5
        hits_current += np.sum(predicted & truth, axis=0)
        hits_baseline += np.sum(~predicted & ~truth, axis=0)
    balanced = 0.5 * (hits_current / n + hits_baseline / m)
    p = (1 + int(np.sum(balanced[1:] >= balanced[0]))) / (permutations + 1)
    return float(balanced[0]), p


def grade(mmd_p: float, classifier_p: float, score: float, t: DriftThresholds) -> DriftLevel:
    """The recommendation from the two p-values and the score (module docstring)."""
    significant = (mmd_p <= t.alpha) + (classifier_p <= t.alpha)
    if significant == 2:
        return DriftLevel.URGENT_ROLLBACK if score >= t.urgent_score else DriftLevel.WARNING
    return DriftLevel.MONITOR if significant == 1 else DriftLevel.NO_ACTION


def compare(
    baseline: Any,
    current: Any,
    *,
    permutations: int = 200,
    seed: int = 0,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Test ``current`` (rows are vectors) against ``baseline``; ValueError for windows of
    fewer than ``MIN_SAMPLES`` vectors or of different widths."""
    np = _np()
    x = np.asarray(baseline, dtype=np.float64)
    y = np.asarray(current, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError("the two windows must be (n, dims) arrays of the same dims")
    if min(len(x), len(y)) < MIN_SAMPLES:
        raise ValueError(f"each window needs at least {MIN_SAMPLES} vectors")
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    rng = np.random.default_rng(seed)
    mmd2, mmd_p, bandwidth = mmd_test(x, y, permutations=permutations, rng=rng)
    accuracy, classifier_p = classifier_test(x, y, permutations=permutations, rng=rng)
    score = max(0.0, 2.0 * accuracy - 1.0)
    cx, cy = x.mean(axis=0), y.mean(axis=0)
    denominator = float(np.linalg.norm(cx) * np.linalg.norm(cy)) or 1.0
    shift = 1.0 - float(cx @ cy) / denominator
    level = grade(mmd_p, classifier_p, score, thresholds or DriftThresholds())
    return DriftReport(
        n_baseline=len(x), n_current=len(y), mmd2=mmd2, mmd_p=mmd_p, bandwidth=bandwidth,
        accuracy=accuracy, classifier_p=classifier_p, score=score, centroid_shift=shift,
        level=level,
    )  # fmt: skip


def false_alarm_rate(
    pool: Any,
    window: int,
    *,
    splits: int,
    seed: int = 0,
    permutations: int = 200,
    thresholds: DriftThresholds | None = None,
    level: DriftLevel = DriftLevel.WARNING,
) -> float:
    """The share of baseline-versus-baseline splits graded ``level`` or worse: two disjoint
    windows of ``window`` vectors drawn from ``pool`` (one behaviour) ``splits`` times."""
    np = _np()
    vectors = np.asarray(pool, dtype=np.float64)
    if 2 * window > len(vectors):
        raise ValueError("the pool must hold two disjoint windows")
    rng = np.random.default_rng(seed)
    alarms = 0
    for i in range(splits):
        order = rng.permutation(len(vectors))
        report = compare(vectors[order[:window]], vectors[order[window : 2 * window]],
                         permutations=permutations, seed=seed + i + 1,
                         thresholds=thresholds)  # fmt: skip
        alarms += report.level >= level
    return alarms / splits
