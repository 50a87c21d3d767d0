"""Settings of drift detection (docs/observability.md): which agents are watched, what share
of their answers is sampled, the window size and the tests' thresholds."""

from __future__ import annotations

from pydantic import Field

from guarita.settings_base import Strict as _Strict


class DriftSettings(_Strict):
    enabled: bool = False
    agents: list[str] | None = Field(
        default=None, description="The agents watched; absent: every configured agent."
    )
    sample_rate: float = Field(
        default=0.1, gt=0, le=1, description="The share of successful answers embedded."
    )
    inputs: bool = Field(
        default=True, description="Also embed the last user message (input drift)."
    )
    window: int = Field(
        default=50, ge=8, le=5000,
        description="Samples per window (baseline and current); bench/drift_power.py measured "
        "the power at 50.",
    )  # fmt: skip
    interval_s: float = Field(
        default=60.0, gt=0, description="How often the evaluator looks for a full window."
    )
    permutations: int = Field(default=200, ge=20, le=10_000)
    alpha: float = Field(
        default=0.05, gt=0, lt=0.5,
        description="Each test's significance: at most this share of false warnings.",
    )  # fmt: skip
    urgent_score: float = Field(
        default=0.3, gt=0, le=1,
        description="The drift score (total-variation lower bound) from which a warning is "
        "urgent (the source document's 0.3).",
    )  # fmt: skip
    queue_max: int = Field(
        default=1000, ge=1, description="Answers waiting to be embedded; more are dropped."
    )
    batch_size: int = Field(default=32, ge=1, le=1000)
    flush_interval_s: float = Field(default=1.0, gt=0)
