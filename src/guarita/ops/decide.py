"""Rollout decisions, pure: given the samples of a canary stage, promote, hold or roll back;
given shadow pairs, a verdict. No I/O; the rollout service collects and acts.

A bare "error rate above 1%" on a small sample rolls back a healthy canary about a quarter
of the time, so every rule here is a confidence bound (``guarita.ops.stats``):

- under ``min_samples`` per arm the decision is HOLD ("not enough data" never rolls back);
- a stage is looked at when the smaller arm reaches min_samples, twice that, four times
  that... up to ``max_samples``; each look uses the first that-many samples of each arm,
  so between looks the decision does not change and the false-rollback rate is spent over
  a known number of looks (``alpha / (stages x looks x tests)`` per test, Bonferroni);
- ROLLBACK when a metric is beyond its practical limit (while the stable one is within it)
  or beyond its margin of the stable one, each with confidence ``1 - alpha_per_test``;
- PROMOTE when every metric is within its limit and its margin, each bound at ``power``;
- otherwise HOLD; an undecided stage at max_samples holds for a person.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from guarita.ops import stats
from guarita.settings_rollouts import CanaryPolicy, ShadowPolicy

if TYPE_CHECKING:
    import numpy as np

TESTS_PER_LOOK = 8  # error, p95, quality, consistency: each against its limit and the stable


@dataclass(frozen=True, slots=True)
class Sample:
    """One request of one arm."""

    ok: bool  # False: an error (5xx, timeout, provider failure, quality reject)
    latency_ms: float
    quality: float | None = None
    consistency: float | None = None


class Action(StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reasons: tuple[str, ...]
    figures: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm's samples as arrays, in arrival order (NaN: not scored). Simulations build
    these directly; services pass :class:`Sample` lists to :func:`canary_decision`."""

    ok: np.ndarray
    latency_ms: np.ndarray
    quality: np.ndarray
    consistency: np.ndarray

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> Arm:
        import numpy as np

        def scores(values: list[float | None]) -> np.ndarray:
            return np.array([math.nan if v is None else v for v in values], dtype=float)

        return cls(
            ok=np.array([s.ok for s in samples], dtype=bool),
            latency_ms=np.array([s.latency_ms for s in samples], dtype=float),
            quality=scores([s.quality for s in samples]),
            consistency=scores([s.consistency for s in samples]),
        )

    def __len__(self) -> int:
        return int(self.ok.size)

    def head(self, n: int) -> Arm:
        """The first ``n`` samples (a look uses the earliest ones, so it is reproducible)."""
        return Arm(self.ok[:n], self.latency_ms[:n], self.quality[:n], self.consistency[:n])


Outcome = Literal["fail", "pass", "open", "skip"]


@dataclass(slots=True)
class _Check:
    outcome: Outcome
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def checkpoints(policy: CanaryPolicy) -> list[int]:
    """The sample sizes per arm at which a stage is looked at."""
    points, n = [], policy.min_samples
    while n <= policy.max_samples:
        points.append(n)
        n *= 2
    return points


def alpha_per_test(policy: CanaryPolicy) -> float:
    tested_stages = max(1, sum(1 for s in policy.stages if s < 100))
    return policy.alpha / (tested_stages * len(checkpoints(policy)) * TESTS_PER_LOOK)


def canary_decision(
    stable: Sequence[Sample], candidate: Sequence[Sample], policy: CanaryPolicy
) -> Decision:
    """One stage's decision from the stage's samples of each arm, in arrival order."""
    return decide_arms(Arm.from_samples(stable), Arm.from_samples(candidate), policy)


def decide_arms(stable: Arm, candidate: Arm, policy: CanaryPolicy) -> Decision:
    """:func:`canary_decision` on arrays: each arm cut to the latest look's size (so
    extra samples past a look change nothing until the next one), then the four tests."""
    points = checkpoints(policy)
    smaller = min(len(stable), len(candidate))
    base = {"stable_n": len(stable), "candidate_n": len(candidate), "looks": len(points)}
    if smaller < policy.min_samples:
        reason = (f"not enough data: stable n={len(stable)}, candidate n={len(candidate)} "
                  f"(each needs {policy.min_samples})")  # fmt: skip
        return Decision(Action.HOLD, (reason,), {**base, "look": 0})
    look = max(i for i, n in enumerate(points) if n <= smaller) + 1
    n = points[look - 1]
    a, b = alpha_per_test(policy), 1 - policy.power
    s, c = stable.head(n), candidate.head(n)
    checks = {
        "error_rate": _error_check(s, c, policy, a, b),
        "p95_latency_ms": _latency_check(s, c, policy, a, b),
        "quality": _score_check(
            "quality",
            s.quality,
            c.quality,
            policy.min_quality,
            policy.max_quality_drop,
            policy,
            a,
            b,
        ),
        "consistency": _score_check(
            "consistency",
            s.consistency,
            c.consistency,
            policy.min_consistency,
            policy.max_consistency_drop,
            policy,
            a,
            b,
        ),
    }
    figures: dict[str, Any] = {**base, "look": look, "n": n, "alpha_per_test": a}
    figures.update({name: {"outcome": ch.outcome, **ch.figures} for name, ch in checks.items()})
    return _combine(checks, figures, exhausted=look == len(points))


def _combine(checks: dict[str, _Check], figures: dict[str, Any], *, exhausted: bool) -> Decision:
    failed = [ch.reason for ch in checks.values() if ch.outcome == "fail"]
    if failed:
        return Decision(Action.ROLLBACK, tuple(failed), figures)
    if all(ch.outcome in ("pass", "skip") for ch in checks.values()):
        return Decision(Action.PROMOTE, tuple(ch.reason for ch in checks.values()), figures)
    reasons = [ch.reason for ch in checks.values() if ch.outcome == "open"]
    if exhausted:
        figures["exhausted"] = True
        reasons.append(f"undecided after {figures['n']} samples per arm: promote or abort "
                       "by hand")  # fmt: skip
    return Decision(Action.HOLD, tuple(reasons), figures)


def _error_check(s: Arm, c: Arm, policy: CanaryPolicy, a: float, b: float) -> _Check:
    n = len(c)
    fc, fs = int((~c.ok).sum()), int((~s.ok).sum())
    cand, stable = stats.binomial_rate(fc, n, a), stats.binomial_rate(fs, n, a)
    diff = stats.rate_difference(fc, n, fs, n, a)
    figures = {
        "candidate": cand.as_dict(),
        "stable": stable.as_dict(),
        "difference": diff.as_dict(),
    }
    limit, margin = policy.max_error_rate, policy.max_error_rate_increase
    if cand.lower > limit and stable.estimate <= limit:
        return _Check("fail", f"error rate {cand.estimate:.4f} > {limit} (lower bound "
                      f"{cand.lower:.4f}, stable {stable.estimate:.4f})", figures)  # fmt: skip
    if diff.lower > margin:
        return _Check("fail", f"error rate {cand.estimate:.4f} vs stable {stable.estimate:.4f}: "
                      f"+{diff.estimate:.4f} > +{margin} (lower bound {diff.lower:.4f})",
                      figures)  # fmt: skip
    cand_p = stats.binomial_rate(fc, n, b)
    diff_p = stats.rate_difference(fc, n, fs, n, b)
    if cand_p.upper <= limit and diff_p.upper <= margin:
        return _Check("pass", f"error rate {cand.estimate:.4f} <= {limit} (upper bound "
                      f"{cand_p.upper:.4f})", figures)  # fmt: skip
    if stable.estimate > limit:
        return _Check("open", f"error rate: both arms above {limit} (stable "
                      f"{stable.estimate:.4f}, candidate {cand.estimate:.4f})",
                      figures)  # fmt: skip
    return _Check("open", f"error rate {cand.estimate:.4f}: not yet shown <= {limit} (upper "
                  f"bound {cand_p.upper:.4f})", figures)  # fmt: skip


def _latency_check(s: Arm, c: Arm, policy: CanaryPolicy, a: float, b: float) -> _Check:
    cand, stable = stats.quantile(c.latency_ms, 0.95, a), stats.quantile(s.latency_ms, 0.95, a)
    limit, slower = policy.max_p95_ms, 1 + policy.max_p95_increase
    figures = {"candidate": cand.as_dict(), "stable": stable.as_dict()}
    if cand.lower > limit and stable.estimate <= limit:
        return _Check("fail", f"p95 latency {cand.estimate:.0f} ms > {limit:.0f} ms (lower "
                      f"bound {cand.lower:.0f} ms)", figures)  # fmt: skip
    # against the stable one: both bounds at a/2, so the comparison has confidence 1 - a
    cand_h, stable_h = (
        stats.quantile(c.latency_ms, 0.95, a / 2),
        stats.quantile(s.latency_ms, 0.95, a / 2),
    )
    if cand_h.lower > stable_h.upper * slower:
        return _Check("fail", f"p95 latency {cand.estimate:.0f} ms vs stable "
                      f"{stable.estimate:.0f} ms: more than {policy.max_p95_increase:.0%} "
                      "slower", figures)  # fmt: skip
    cand_p = stats.quantile(c.latency_ms, 0.95, b / 2)
    stable_p = stats.quantile(s.latency_ms, 0.95, b / 2)
    if cand_p.upper <= limit and cand_p.upper <= stable_p.lower * slower:
        return _Check("pass", f"p95 latency {cand.estimate:.0f} ms <= {limit:.0f} ms (upper "
                      f"bound {cand_p.upper:.0f} ms)", figures)  # fmt: skip
    return _Check("open", f"p95 latency {cand.estimate:.0f} ms: not yet shown within "
                  f"{limit:.0f} ms and {policy.max_p95_increase:.0%} of the stable one",
                  figures)  # fmt: skip


def _score_check(
    name: str,
    stable_values: np.ndarray,
    candidate_values: np.ndarray,
    floor: float,
    max_drop: float,
    policy: CanaryPolicy,
    a: float,
    b: float,
) -> _Check:
    """Quality and consistency: the candidate's mean above a floor and not far below the
    stable one's (one-sided t and Welch bounds)."""
    import numpy as np

    sv = stable_values[~np.isnan(stable_values)]
    cv = candidate_values[~np.isnan(candidate_values)]
    if sv.size == 0 and cv.size == 0:
        return _Check("skip", f"{name}: not scored")
    if min(sv.size, cv.size) < policy.min_scored:
        return _Check("open", f"{name}: not enough scores: stable {sv.size}, candidate {cv.size} "
                      f"(each needs {policy.min_scored})", {"stable_n": int(sv.size),
                      "candidate_n": int(cv.size)})  # fmt: skip
    cand, stable = stats.mean(cv, a), stats.mean(sv, a)
    drop = stats.mean_difference(sv, cv, a)
    figures = {"candidate": cand.as_dict(), "stable": stable.as_dict(), "drop": drop.as_dict()}
    if cand.upper < floor and stable.estimate >= floor:
        return _Check("fail", f"{name} mean {cand.estimate:.3f} < {floor} (upper bound "
                      f"{cand.upper:.3f})", figures)  # fmt: skip
    if drop.lower > max_drop:
        return _Check("fail", f"{name} mean {cand.estimate:.3f} vs stable "
                      f"{stable.estimate:.3f}: drop {drop.estimate:.3f} > {max_drop} (lower bound "
                      f"{drop.lower:.3f})",
                      figures)  # fmt: skip
    cand_p, drop_p = stats.mean(cv, b), stats.mean_difference(sv, cv, b)
    if cand_p.lower >= floor and drop_p.upper <= max_drop:
        return _Check("pass", f"{name} mean {cand.estimate:.3f} >= {floor} (lower bound "
                      f"{cand_p.lower:.3f})", figures)  # fmt: skip
    return _Check("open", f"{name} mean {cand.estimate:.3f}: not yet shown >= {floor} and within "
                  f"{max_drop} of the stable one", figures)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """One mirrored request: the live answer and the candidate's to the same request."""

    live_ok: bool
    candidate_ok: bool
    similarity: float | None  # cosine of the two answers' embeddings
    live_latency_ms: float
    candidate_latency_ms: float
    live_tokens: int
    candidate_tokens: int
    candidate_cost_usd: float
    live_quality: float | None = None
    candidate_quality: float | None = None


class ShadowVerdict(StrEnum):
    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    REJECT = "REJECT"


@dataclass(frozen=True, slots=True)
class ShadowReport:
    verdict: ShadowVerdict
    reasons: tuple[str, ...]
    figures: dict[str, Any]  # JSON-ready


def shadow_report(
    pairs: Sequence[ShadowPair], self_similarity: Sequence[float], policy: ShadowPolicy
) -> ShadowReport:
    """The shadow verdict. Similarity is normalised by the stable version's self-similarity
    (its mean similarity to itself on the same requests): an agent that answers differently
    each time is compared with how much it agrees with itself. Without self-similarity
    values the raw similarity is used and the report says so."""
    import numpy as np

    alpha = 1 - policy.confidence
    n = len(pairs)
    failures = sum(1 for p in pairs if not p.candidate_ok)
    error = stats.binomial_rate(failures, n, alpha)
    sims = [p.similarity for p in pairs if p.similarity is not None and p.candidate_ok]
    calibrated = len(self_similarity) >= 2
    if calibrated:
        similarity = stats.ratio_of_means(sims, self_similarity, alpha)
    else:
        similarity = stats.mean(sims, alpha)
    figures: dict[str, Any] = {
        "pairs": n,
        "candidate_error_rate": error.as_dict(),
        "live_error_rate": stats.binomial_rate(
            sum(1 for p in pairs if not p.live_ok), n, alpha
        ).as_dict(),
        "similarity": {
            "raw_mean": _mean_or_none([float(x) for x in sims]),
            "self_similarity_mean": _mean_or_none([float(x) for x in self_similarity]),
            "self_similarity_n": len(self_similarity),
            "calibrated": calibrated,
            "normalised": similarity.as_dict(),
        },
        "latency_ms": {
            arm: _percentiles(np.array([getattr(p, f"{arm}_latency_ms") for p in pairs]))
            for arm in ("live", "candidate")
        },
        "tokens": {
            arm: _mean_or_none([float(getattr(p, f"{arm}_tokens")) for p in pairs])
            for arm in ("live", "candidate")
        },
        "candidate_cost_usd": {
            "total": _round_or_none(sum(p.candidate_cost_usd for p in pairs)),
            "per_request": _mean_or_none([p.candidate_cost_usd for p in pairs]),
        },
        "quality": {
            arm: _mean_or_none(
                [q for p in pairs if (q := getattr(p, f"{arm}_quality")) is not None]
            )
            for arm in ("live", "candidate")
        },
    }
    verdict, reasons = _shadow_verdict(n, error, similarity, calibrated, policy)
    return ShadowReport(verdict, reasons, figures)


def _shadow_verdict(
    n: int, error: stats.Bounds, similarity: stats.Bounds, calibrated: bool, policy: ShadowPolicy
) -> tuple[ShadowVerdict, tuple[str, ...]]:
    scale = "" if calibrated else " (raw: no self-similarity to calibrate against)"
    if n < policy.min_pairs:
        return ShadowVerdict.REVIEW, (f"not enough data: {n} pairs (needs {policy.min_pairs})",)
    rejects = []
    if error.lower > policy.reject_error_rate:
        rejects.append(f"error rate {error.estimate:.4f} > {policy.reject_error_rate} (lower "
                       f"bound {error.lower:.4f})")  # fmt: skip
    if similarity.upper < policy.reject_similarity:
        rejects.append(f"similarity {similarity.estimate:.3f} < {policy.reject_similarity} "
                       f"(upper bound {similarity.upper:.3f}){scale}")  # fmt: skip
    if rejects:
        return ShadowVerdict.REJECT, tuple(rejects)
    sim_ok = similarity.lower > policy.approve_similarity
    err_ok = error.upper < policy.approve_error_rate
    reasons = (
        f"similarity {similarity.estimate:.3f}, lower bound {similarity.lower:.3f} "
        f"{'>' if sim_ok else '<='} {policy.approve_similarity}{scale}",
        f"error rate {error.estimate:.4f}, upper bound {error.upper:.4f} "
        f"{'<' if err_ok else '>='} {policy.approve_error_rate}",
    )
    return (ShadowVerdict.APPROVE if sim_ok and err_ok else ShadowVerdict.REVIEW), reasons


def _round_or_none(value: float) -> float | None:
    return None if not math.isfinite(value) else float(f"{value:.6g}")


def _mean_or_none(values: Sequence[float]) -> float | None:
    return _round_or_none(sum(values) / len(values)) if values else None


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    import numpy as np

    if values.size == 0:
        return {"p50": None, "p95": None}
    return {
        "p50": _round_or_none(float(np.quantile(values, 0.5))),
        "p95": _round_or_none(float(np.quantile(values, 0.95))),
    }
