"""Settings of rollouts (docs/rollouts.md): the canary's stages and statistical tests, the
shadow verdict's thresholds and the change-type decision matrix.

The thresholds are the practical limits (error rate above 1% is bad); the statistics that
decide whether a sample shows a candidate beyond them live in ``guarita.ops.stats`` and
``guarita.ops.decide``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field, field_validator, model_validator

from guarita.settings_base import Strict as _Strict
from guarita.settings_quality import RELEVANCE_FULL_AT

Strategy = Literal["shadow_then_canary", "canary", "fast_canary", "immediate"]
RollbackRule = Literal["auto", "manual"]


def _check_stages(stages: tuple[int, ...]) -> tuple[int, ...]:
    if not stages:
        raise ValueError("stages: at least one stage")
    if any(not 0 < s <= 100 for s in stages):
        raise ValueError("stages: each stage is a percentage in 1..100")
    if any(b <= a for a, b in pairwise(stages)):
        raise ValueError("stages: each stage must be larger than the one before")
    if stages[-1] != 100:
        raise ValueError("stages: the last stage must be 100 (the candidate takes all traffic)")
    return stages


class CanaryPolicy(_Strict):
    """One canary: the traffic stages and, per stage, the tests that promote, hold or roll
    back. The defaults come from bench/rollout_sim.py: with them a healthy candidate is
    rolled back in well under 5% of rollouts and a candidate failing 10% of its calls is
    rolled back at the first look of the first stage."""

    stages: tuple[int, ...] = Field(
        default=(5, 25, 50, 100),
        description="Percent of traffic on the candidate, in order; the last is 100. A stage "
        "below 100 is tested; promoting from the last of those completes the rollout.",
    )
    min_samples: int = Field(
        default=200,
        ge=10,
        description="Requests per arm before a stage is judged at all: under it, hold.",
    )
    max_samples: int = Field(
        default=3200,
        ge=10,
        description="Requests per arm after which an undecided stage stops looking and holds "
        "for a person (promote or abort by hand). Looks happen at min_samples, twice that, "
        "four times... up to this.",
    )
    min_scored: int = Field(
        default=30,
        ge=2,
        description="Quality or consistency values per arm before those tests count (a "
        "metric no arm has is skipped; one under this holds).",
    )
    max_error_rate: float = Field(default=0.01, gt=0, lt=1)
    min_quality: float = Field(default=0.7, ge=0, le=1)
    max_p95_ms: float = Field(default=2000.0, gt=0)
    min_consistency: float = Field(default=0.9, ge=0, le=1)
    max_error_rate_increase: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Error rate the candidate may add over the stable one (absolute).",
    )
    max_quality_drop: float = Field(default=0.05, gt=0, le=1)
    max_p95_increase: float = Field(
        default=0.25, gt=0, description="Relative: 0.25 lets the candidate's p95 be 25% slower."
    )
    max_consistency_drop: float = Field(default=0.05, gt=0, le=1)
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Probability of rolling back a candidate that is within every limit, over "
        "the whole rollout: split evenly (Bonferroni) over the tested stages, the looks of a "
        "stage and the tests of a look.",
    )
    power: float = Field(
        default=0.8,
        gt=0.5,
        lt=1,
        description="Confidence needed to promote: every metric's bound at this level "
        "within its limit and within its margin of the stable one.",
    )

    @field_validator("stages")
    @classmethod
    def _stages_increase_to_100(cls, stages: tuple[int, ...]) -> tuple[int, ...]:
        return _check_stages(stages)

    @model_validator(mode="after")
    def _samples_ordered(self) -> CanaryPolicy:
        if self.max_samples < self.min_samples:
            raise ValueError("max_samples must be at least min_samples")
        return self


class ShadowPolicy(_Strict):
    """Shadow mirroring and its verdict; the similarity thresholds apply to the candidate's
    similarity divided by the stable version's own self-similarity (two answers of the
    stable version to the same request), so a non-deterministic agent is not rejected for
    disagreeing with itself."""

    sample_share: float = Field(default=0.1, gt=0, le=1, description="Share of live requests.")
    queue_size: int = Field(default=100, ge=1, description="Mirrored requests waiting; more drop.")
    concurrency: int = Field(default=2, ge=1)
    timeout_s: float = Field(default=30.0, gt=0)
    min_pairs: int = Field(default=100, ge=1, description="Under this the verdict is REVIEW.")
    self_similarity_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of mirrored requests also sent twice to the stable version, to "
        "measure its self-similarity.",
    )
    reject_error_rate: float = Field(default=0.05, gt=0, lt=1)
    reject_similarity: float = Field(default=0.85, gt=0, le=1)
    approve_similarity: float = Field(default=0.95, gt=0, le=1)
    approve_error_rate: float = Field(default=0.01, gt=0, lt=1)
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Level of each one-sided bound of the verdict."
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ShadowPolicy:
        if self.approve_similarity <= self.reject_similarity:
            raise ValueError("approve_similarity must be above reject_similarity")
        if self.approve_error_rate >= self.reject_error_rate:
            raise ValueError("approve_error_rate must be below reject_error_rate")
        return self


class ChangeTypeRule(_Strict):
    """One row of the decision matrix: how a kind of change is rolled out."""

    strategy: Strategy
    stages: tuple[int, ...] | None = Field(
        default=None, description="Default: rollouts.canary.stages; immediate is (100,)."
    )
    min_samples: int | None = Field(default=None, ge=10, description="Default: the canary's.")
    monitoring_window_s: float = Field(
        default=3600.0, ge=0, description="Watched after reaching 100% (rollback still possible)."
    )
    rollback: RollbackRule = Field(
        default="auto", description="auto: the service rolls back; manual: it alerts."
    )
    human_approval: bool = Field(
        default=False, description="Each promotion waits for a person (guarita rollout resume)."
    )
    review_after: bool = Field(
        default=False, description="A review entry is opened after the change is live."
    )

    @field_validator("stages")
    @classmethod
    def _stages_increase_to_100(cls, stages: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if stages is None else _check_stages(stages)

    @model_validator(mode="after")
    def _immediate_has_no_stages(self) -> ChangeTypeRule:
        if self.strategy == "immediate" and self.stages not in (None, (100,)):
            raise ValueError("stages: an immediate change goes straight to 100")
        if self.strategy != "immediate" and self.stages == (100,):
            raise ValueError(f"stages: a {self.strategy} needs a stage below 100")
        return self


def _default_change_types() -> dict[str, ChangeTypeRule]:
    day = 24 * 3600.0
    return {
        "new_model": ChangeTypeRule(
            strategy="shadow_then_canary", monitoring_window_s=day, human_approval=True
        ),
        "prompt_update": ChangeTypeRule(strategy="canary", monitoring_window_s=4 * 3600.0),
        "config_change": ChangeTypeRule(
            strategy="fast_canary", stages=(25, 100), monitoring_window_s=3600.0
        ),
        "security_hotfix": ChangeTypeRule(
            strategy="immediate", monitoring_window_s=day, rollback="manual", review_after=True
        ),
    }


class RolloutSettings(_Strict):
    canary: CanaryPolicy = CanaryPolicy()
    shadow: ShadowPolicy = ShadowPolicy()
    evaluate_every_s: float = Field(
        default=30.0, gt=0, description="How often the service judges each running rollout."
    )
    relevance: bool = Field(
        default=True,
        description="Score each rollout sample's relevance (cosine of the question and the "
        "answer on WordLlama, off the live path); its quality is the lower of the record's "
        "quality and this, so an off-topic candidate is rolled back.",
    )
    relevance_full_at: float = Field(
        default=RELEVANCE_FULL_AT,
        gt=0,
        le=1,
        description="The question-answer cosine that counts as fully relevant (1.0).",
    )
    sample_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Samples waiting to be scored and written; past it they are dropped "
        "(counted in guarita_rollout_samples_dropped_total).",
    )
    change_types: dict[str, ChangeTypeRule] = Field(
        default_factory=_default_change_types,
        description="The decision matrix: change type -> strategy, monitoring, rollback, "
        "approval (guarita rollout start --change-type).",
    )

    @field_validator("change_types")
    @classmethod
    def _names_are_plain(cls, rules: dict[str, ChangeTypeRule]) -> dict[str, ChangeTypeRule]:
        for name in rules:
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"change_types: {name!r} is not a plain name")
        return rules
