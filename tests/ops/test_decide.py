"""Canary decisions and shadow verdicts on synthetic, seeded samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench.rollout_sim import SCENARIOS, simulate, simulate_run
from hypothesis import given, settings
from hypothesis import strategies as st

from guarita.ops.decide import (
    Action,
    Sample,
    ShadowPair,
    ShadowVerdict,
    alpha_per_test,
    canary_decision,
    checkpoints,
    shadow_report,
)
from guarita.settings_rollouts import CanaryPolicy, ShadowPolicy

POLICY = CanaryPolicy()


def arm(
    n: int,
    rng: np.random.Generator,
    *,
    error_rate: float = 0.005,
    median_ms: float = 400.0,
    sigma: float = 0.5,
    quality: float | None = 0.85,
) -> list[Sample]:
    return [
        Sample(
            ok=bool(rng.random() >= error_rate),
            latency_ms=float(median_ms * np.exp(sigma * rng.standard_normal())),
            quality=None if quality is None else float(np.clip(rng.normal(quality, 0.1), 0, 1)),
        )
        for _ in range(n)
    ]


def test_not_enough_data_holds_even_when_every_answer_failed() -> None:
    rng = np.random.default_rng(1)
    stable = arm(POLICY.min_samples, rng)
    candidate = arm(POLICY.min_samples - 1, rng, error_rate=1.0)
    decision = canary_decision(stable, candidate, POLICY)
    assert decision.action is Action.HOLD
    assert decision.reasons[0].startswith("not enough data")
    assert canary_decision([], [], POLICY).action is Action.HOLD


sample = st.builds(
    Sample,
    ok=st.booleans(),
    latency_ms=st.floats(0, 1e6),
    quality=st.none() | st.floats(0, 1),
    consistency=st.none() | st.floats(0, 1),
)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(sample, max_size=300),
    st.lists(sample, max_size=POLICY.min_samples - 1),
    st.booleans(),
)
def test_any_arm_under_the_minimum_is_hold_whatever_it_holds(
    big: list[Sample], small: list[Sample], candidate_small: bool
) -> None:
    stable, candidate = (big, small) if candidate_small else (small, big)
    assert canary_decision(stable, candidate, POLICY).action is Action.HOLD


def test_a_candidate_failing_10_percent_is_rolled_back_at_the_first_look() -> None:
    rng = np.random.default_rng(2)
    n = POLICY.min_samples
    decision = canary_decision(arm(n, rng), arm(n, rng, error_rate=0.10), POLICY)
    assert decision.action is Action.ROLLBACK
    assert any(r.startswith("error rate") for r in decision.reasons)
    assert decision.figures["look"] == 1
    assert decision.figures["error_rate"]["candidate"]["lower"] > POLICY.max_error_rate
    json.dumps(decision.figures)  # JSON-ready


def test_an_off_topic_candidate_is_rolled_back_on_quality() -> None:
    rng = np.random.default_rng(3)
    n = POLICY.min_samples
    decision = canary_decision(arm(n, rng), arm(n, rng, quality=0.3), POLICY)
    assert decision.action is Action.ROLLBACK
    assert any(r.startswith("quality mean") for r in decision.reasons)


def test_a_slow_candidate_is_rolled_back_on_p95() -> None:
    rng = np.random.default_rng(4)
    n = 2 * POLICY.min_samples
    slow = arm(n, rng, median_ms=1000.0, sigma=0.668)  # p95 about 3000 ms
    decision = canary_decision(arm(n, rng), slow, POLICY)
    assert decision.action is Action.ROLLBACK
    assert any(r.startswith("p95 latency") for r in decision.reasons)


def test_an_identical_candidate_is_promoted_with_enough_data() -> None:
    rng = np.random.default_rng(5)
    n = 4 * POLICY.min_samples
    decision = canary_decision(arm(n, rng), arm(n, rng), POLICY)
    assert decision.action is Action.PROMOTE, decision.reasons
    assert "quality" in decision.figures and decision.figures["look"] == 3


def test_both_arms_above_the_limit_holds_rather_than_rolling_back() -> None:
    rng = np.random.default_rng(6)
    n = 4 * POLICY.min_samples
    decision = canary_decision(arm(n, rng, error_rate=0.03), arm(n, rng, error_rate=0.03), POLICY)
    assert decision.action is Action.HOLD
    assert any("both arms above" in r for r in decision.reasons)


def test_unscored_metrics_are_skipped_but_half_scored_ones_hold() -> None:
    rng = np.random.default_rng(7)
    n = 4 * POLICY.min_samples
    unscored = canary_decision(arm(n, rng, quality=None), arm(n, rng, quality=None), POLICY)
    assert unscored.action is Action.PROMOTE
    assert unscored.figures["quality"]["outcome"] == "skip"
    half = canary_decision(arm(n, rng), arm(n, rng, quality=None), POLICY)
    assert half.action is Action.HOLD
    assert any("not enough scores" in r for r in half.reasons)


def test_the_decision_only_changes_at_looks() -> None:
    rng = np.random.default_rng(8)
    stable, candidate = arm(700, rng), arm(700, rng, error_rate=0.02)
    at_400 = canary_decision(stable[:400], candidate[:400], POLICY)
    at_799 = canary_decision(stable, candidate, POLICY)  # 700: still the 400 look
    assert at_799.figures["look"] == at_400.figures["look"] == 2
    assert (
        at_799.action is at_400.action
        and at_799.figures["error_rate"] == at_400.figures["error_rate"]
    )


def test_alpha_is_split_over_stages_looks_and_tests() -> None:
    assert checkpoints(POLICY) == [200, 400, 800, 1600, 3200]
    assert alpha_per_test(POLICY) == pytest.approx(0.05 / (3 * 5 * 8))
    fast = CanaryPolicy(stages=(25, 100))
    assert alpha_per_test(fast) == pytest.approx(0.05 / (1 * 5 * 8))


def test_an_undecided_stage_holds_for_a_person_at_max_samples() -> None:
    rng = np.random.default_rng(9)
    policy = CanaryPolicy(min_samples=100, max_samples=200)
    decision = canary_decision(
        arm(300, rng, error_rate=0.01), arm(300, rng, error_rate=0.01), policy
    )
    assert decision.action is Action.HOLD
    assert decision.figures.get("exhausted") is True
    assert decision.reasons[-1].startswith("undecided after 200")


@pytest.mark.slow
def test_healthy_candidates_are_rarely_rolled_back_over_seeded_simulations() -> None:
    summary = simulate("healthy", runs=300, seed=2026)
    rate, _, upper = summary.rate(summary.rollback)
    print(f"false rollbacks {summary.rollback}/300 = {rate:.1%} (95% upper {upper:.1%}); "
          f"promoted {summary.promoted}/300; median requests "
          f"{summary.requests_median:,.0f}")  # fmt: skip
    assert rate <= 0.05
    assert summary.promoted / summary.runs >= 0.9  # identical candidates reach 100%


@pytest.mark.slow
def test_bad_candidates_are_rolled_back_within_the_first_stage_in_simulation() -> None:
    rng = np.random.default_rng(11)
    for scenario in ("failing_10pct", "off_topic"):
        results = [simulate_run(SCENARIOS[scenario], POLICY, rng) for _ in range(50)]
        assert all(r.outcome == "rollback" and r.stage == POLICY.stages[0] for r in results)


# --- shadow -------------------------------------------------------------------------------

SHADOW = ShadowPolicy()


def pairs(
    n: int,
    rng: np.random.Generator,
    *,
    similarity: float,
    error_rate: float = 0.0,
    spread: float = 0.02,
) -> list[ShadowPair]:
    out = []
    for _ in range(n):
        ok = bool(rng.random() >= error_rate)
        out.append(
            ShadowPair(
                live_ok=True,
                candidate_ok=ok,
                similarity=float(np.clip(rng.normal(similarity, spread), 0, 1)) if ok else None,
                live_latency_ms=float(rng.uniform(300, 500)),
                candidate_latency_ms=float(rng.uniform(200, 400)),
                live_tokens=40,
                candidate_tokens=30,
                candidate_cost_usd=0.0001,
                live_quality=0.8,
                candidate_quality=0.82,
            )
        )
    return out


def self_sim(n: int, level: float, rng: np.random.Generator) -> list[float]:
    return [float(x) for x in np.clip(rng.normal(level, 0.02, n), 0, 1)]


def test_shadow_approves_a_candidate_as_similar_as_the_stable_is_to_itself() -> None:
    rng = np.random.default_rng(20)
    report = shadow_report(pairs(400, rng, similarity=0.98), self_sim(50, 0.98, rng), SHADOW)
    assert report.verdict is ShadowVerdict.APPROVE, report.reasons
    figures = json.loads(json.dumps(report.figures))
    assert figures["pairs"] == 400 and figures["similarity"]["calibrated"] is True
    assert figures["latency_ms"]["candidate"]["p95"] < figures["latency_ms"]["live"]["p95"]
    assert figures["candidate_cost_usd"]["total"] == pytest.approx(0.04)
    assert figures["tokens"] == {"live": 40.0, "candidate": 30.0}


def test_self_similarity_calibrates_the_similarity_threshold() -> None:
    rng = np.random.default_rng(21)
    candidate = pairs(400, rng, similarity=0.9)
    # a stable version that agrees with itself at 0.9: a candidate at 0.9 is as good
    calibrated = shadow_report(candidate, self_sim(60, 0.9, rng), SHADOW)
    assert calibrated.verdict is ShadowVerdict.APPROVE, calibrated.reasons
    # measured against a deterministic stable version (self-similarity 1.0) it is not
    strict = shadow_report(candidate, self_sim(60, 1.0, rng), SHADOW)
    assert strict.verdict is ShadowVerdict.REVIEW
    uncalibrated = shadow_report(candidate, [], SHADOW)
    assert uncalibrated.figures["similarity"]["calibrated"] is False


def test_shadow_rejects_dissimilar_or_failing_candidates() -> None:
    rng = np.random.default_rng(22)
    off = shadow_report(pairs(200, rng, similarity=0.6), self_sim(50, 0.97, rng), SHADOW)
    assert off.verdict is ShadowVerdict.REJECT
    assert any(r.startswith("similarity") for r in off.reasons)
    failing = pairs(200, rng, similarity=0.98, error_rate=0.2)
    broken = shadow_report(failing, self_sim(50, 0.98, rng), SHADOW)
    assert broken.verdict is ShadowVerdict.REJECT
    assert any(r.startswith("error rate") for r in broken.reasons)


def test_shadow_reviews_with_too_few_pairs_or_in_between() -> None:
    rng = np.random.default_rng(23)
    few = shadow_report(pairs(20, rng, similarity=0.3), self_sim(50, 0.98, rng), SHADOW)
    assert few.verdict is ShadowVerdict.REVIEW  # not enough data never rejects
    assert few.reasons[0].startswith("not enough data")
    middle = shadow_report(pairs(400, rng, similarity=0.9), self_sim(50, 0.98, rng), SHADOW)
    assert middle.verdict is ShadowVerdict.REVIEW
    # error-free but only 150 pairs: the error rate's upper bound is not yet under 1%
    short = shadow_report(pairs(150, rng, similarity=0.98), self_sim(50, 0.98, rng), SHADOW)
    assert short.verdict is ShadowVerdict.REVIEW
