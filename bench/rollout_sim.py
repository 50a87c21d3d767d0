"""Repeated seeded simulations of the canary decision engine through all its stages.

Each run is one rollout: at each stage below 100% every request goes to the candidate with
the stage's probability and to the stable version otherwise; both arms' samples (ok,
latency, quality, consistency) are drawn from the scenario's distributions; the engine
(``guarita.ops.decide.decide_arms``, what ``canary_decision`` runs) is asked at each of its
looks (the decision does not change between looks, so asking more often changes nothing).
A run ends rolled back, promoted (every tested stage promoted: the candidate takes 100%) or
stuck (a stage undecided after max_samples per arm: a person decides).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/rollout_sim.py [--runs 1000] [--seed 11]

Reports, per scenario, the share of each outcome with a 95% Clopper-Pearson interval and
the requests (both arms, all stages) until the outcome: median and 90th percentile.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from guarita.ops.decide import Action, Arm, checkpoints, decide_arms
from guarita.ops.stats import binomial_rate
from guarita.settings_rollouts import CanaryPolicy


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How one version answers: error rate, lognormal latency, normal quality and
    consistency scores clipped to 0..1."""

    error_rate: float = 0.005
    latency_median_ms: float = 400.0
    latency_sigma: float = 0.5  # p95 = median * exp(1.645 sigma): 910 ms
    quality: float = 0.85
    consistency: float = 0.96

    def draw(self, n: int, rng: np.random.Generator) -> Arm:
        return Arm(
            ok=rng.random(n) >= self.error_rate,
            latency_ms=self.latency_median_ms * np.exp(self.latency_sigma * rng.standard_normal(n)),
            quality=np.clip(rng.normal(self.quality, 0.1, n), 0, 1),
            consistency=np.clip(rng.normal(self.consistency, 0.03, n), 0, 1),
        )


STABLE = Behaviour()
SCENARIOS: dict[str, Behaviour] = {
    # the same distributions as the stable one: a healthy (or identical) candidate
    "healthy": STABLE,
    # within every limit, a little worse than the stable one on each metric
    "slightly_worse": Behaviour(
        error_rate=0.007, latency_median_ms=440.0, quality=0.83, consistency=0.95
    ),
    "failing_10pct": Behaviour(error_rate=0.10),
    "off_topic": Behaviour(quality=0.3),
    "slow_p95_3000": Behaviour(latency_median_ms=1000.0, latency_sigma=0.668),
    # beyond the 1% limit, but by little: how often is it promoted anyway?
    "failing_2pct": Behaviour(error_rate=0.02),
}


@dataclass(frozen=True, slots=True)
class RunResult:
    outcome: str  # "rollback" | "promoted" | "stuck"
    stage: int  # the stage it ended in (100 when promoted)
    look: int  # the look of that stage
    requests: int  # both arms, every stage so far


def simulate_run(
    candidate: Behaviour, policy: CanaryPolicy, rng: np.random.Generator, stable: Behaviour = STABLE
) -> RunResult:
    points = checkpoints(policy)
    requests = 0
    for stage in (s for s in policy.stages if s < 100):
        share = stage / 100
        n_max = points[-1]
        s_arm, c_arm = stable.draw(n_max, rng), candidate.draw(n_max, rng)
        for look, n in enumerate(points, start=1):
            decision = decide_arms(s_arm.head(n), c_arm.head(n), policy)
            needed = _requests_until(n, share, rng)
            if decision.action is Action.ROLLBACK:
                return RunResult("rollback", stage, look, requests + needed)
            if decision.action is Action.PROMOTE:
                requests += needed
                break
        else:
            return RunResult("stuck", stage, len(points), requests + needed)
    return RunResult("promoted", 100, 0, requests)


def _requests_until(n: int, share: float, rng: np.random.Generator) -> int:
    """Requests until both arms have n samples when a request is the candidate's with
    probability ``share``: the later of the two negative-binomial waits."""
    candidate = n + int(rng.negative_binomial(n, share))
    stable = n + int(rng.negative_binomial(n, 1 - share))
    return max(candidate, stable)


@dataclass(frozen=True, slots=True)
class Summary:
    scenario: str
    runs: int
    rollback: int
    promoted: int
    stuck: int
    rollback_in_first_stage: int
    requests_median: float
    requests_p90: float

    def rate(self, count: int) -> tuple[float, float, float]:
        b = binomial_rate(count, self.runs, 0.025)
        return b.estimate, b.lower, b.upper


def simulate(scenario: str, runs: int, seed: int, policy: CanaryPolicy | None = None) -> Summary:
    policy = policy or CanaryPolicy()
    rng = np.random.default_rng(seed)
    results = [simulate_run(SCENARIOS[scenario], policy, rng) for _ in range(runs)]
    first = next(s for s in policy.stages if s < 100)
    requests = np.array([r.requests for r in results])
    return Summary(
        scenario=scenario,
        runs=runs,
        rollback=sum(r.outcome == "rollback" for r in results),
        promoted=sum(r.outcome == "promoted" for r in results),
        stuck=sum(r.outcome == "stuck" for r in results),
        rollback_in_first_stage=sum(r.outcome == "rollback" and r.stage == first for r in results),
        requests_median=float(np.median(requests)),
        requests_p90=float(np.quantile(requests, 0.9)),
    )


def naive_rollback_rate(
    runs: int, seed: int, *, every: int | None, stages: int = 3, error_rate: float = 0.005
) -> float:
    """The bare rule "roll back when the candidate's error rate is above 1%" on a healthy
    candidate: looked at once per stage after 200 of its requests (``every=None``), or
    every ``every`` requests from 100 to 1,000."""
    rng = np.random.default_rng(seed)
    looks = [200] if every is None else list(range(100, 1001, every))
    rolled_back = 0
    for _ in range(runs):
        for _stage in range(stages):
            errors = np.cumsum(rng.random(looks[-1]) < error_rate)
            if any(errors[n - 1] / n > 0.01 for n in looks):
                rolled_back += 1
                break
    return rolled_back / runs


def _pct(summary: Summary, count: int) -> str:
    est, lo, hi = summary.rate(count)
    return f"{est:.1%} [{lo:.1%}, {hi:.1%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--min-samples", type=int, default=None)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    args = parser.parse_args()
    policy = CanaryPolicy()
    if args.min_samples:
        policy = CanaryPolicy(min_samples=args.min_samples, max_samples=args.min_samples * 16)
    print(f"policy: stages {policy.stages}, min_samples {policy.min_samples}, max_samples "
          f"{policy.max_samples}, alpha {policy.alpha}, power {policy.power}; "
          f"{args.runs} runs per scenario, seed {args.seed}\n")  # fmt: skip
    print("| scenario | rolled back [95% CI] | in stage 1 | promoted to 100% | stuck | "
          "requests to decide (median / p90) | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for index, scenario in enumerate(SCENARIOS):
        if scenario not in args.scenarios.split(","):
            continue
        started = time.perf_counter()
        s = simulate(scenario, args.runs, args.seed + index, policy)
        print(f"| {scenario} | {_pct(s, s.rollback)} | {_pct(s, s.rollback_in_first_stage)} "
              f"| {_pct(s, s.promoted)} | {_pct(s, s.stuck)} | {s.requests_median:,.0f} / "
              f"{s.requests_p90:,.0f} | {time.perf_counter() - started:.1f} |",
              flush=True)  # fmt: skip
    once = naive_rollback_rate(args.runs * 20, args.seed, every=None, stages=1)
    staged = naive_rollback_rate(args.runs * 20, args.seed, every=None)
    often = naive_rollback_rate(args.runs * 20, args.seed, every=50)
    print(f"\nthe bare rule (error rate > 1%) on a healthy candidate (0.5% errors), "
          f"{args.runs * 20} runs: one look at 200 requests {once:.1%}; one look per stage, "
          f"3 stages {staged:.1%}; a look every 50 requests, 3 stages {often:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
