"""Settings of answer quality (docs/quality.md): named scorers, and per agent which scorers
apply and how many trials check an answer's consistency."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from guarita.settings_base import Strict as _Strict

RELEVANCE_FULL_AT = 0.25
"""WordLlama cosine of a question and an on-topic answer at which relevance scores 1.0
(docs/rollouts.md: measured on real answers)."""

DEFAULT_RUBRIC = (
    "Rate how well the answer responds to the user's last message: relevant, correct, "
    "complete and clear. Reply with a single number from 0 (useless) to 10 (perfect)."
)


class ScorerSettings(_Strict):
    """One named scorer. ``heuristic``: penalties for empty, refused, echoed, truncated or
    invalid-JSON answers; ``similarity``: cosine to a reference answer (embeddings);
    ``relevance``: cosine of the last user message and the answer (embeddings), so an
    off-topic answer scores low; ``judge``: a configured model rates the answer with a
    rubric."""

    kind: Literal["heuristic", "similarity", "relevance", "judge"]
    model: str | None = Field(default=None, description="judge: the model that rates.")
    rubric: str = Field(default=DEFAULT_RUBRIC, description="judge: what it rates against.")
    max_tokens: int = Field(default=8, gt=0, description="judge: room for the number.")
    full_at: float = Field(
        default=RELEVANCE_FULL_AT,
        gt=0,
        le=1,
        description="relevance: the question-answer cosine that scores 1.0 (the score is "
        "the cosine divided by this, within 0..1).",
    )

    @model_validator(mode="after")
    def _judge_has_model(self) -> ScorerSettings:
        if self.kind == "judge" and not self.model:
            raise ValueError("a judge scorer names its model")
        return self


def _default_scorers() -> dict[str, ScorerSettings]:
    return {
        "heuristic": ScorerSettings(kind="heuristic"),
        "similarity": ScorerSettings(kind="similarity"),
    }


class QualityScoringSettings(_Strict):
    """``Settings.quality``: the scorers agents may name."""

    scorers: dict[str, ScorerSettings] = Field(default_factory=_default_scorers)


class AgentQualitySettings(_Strict):
    """``AgentSettings.quality``: the scorers that rate this agent's answers."""

    scorers: list[str] = Field(default_factory=lambda: ["heuristic"], min_length=1)
    weights: dict[str, float] | None = Field(
        default=None, description="Per scorer name, for the weighted mean; unset: equal."
    )

    @model_validator(mode="after")
    def _weights_name_scorers(self) -> AgentQualitySettings:
        for name, weight in (self.weights or {}).items():
            if name not in self.scorers:
                raise ValueError(f"weights.{name}: not one of this agent's scorers")
            if weight < 0:
                raise ValueError(f"weights.{name}: must be >= 0")
        return self


class ConsistencySettings(_Strict):
    """``AgentSettings.consistency``: N trials of each call; their agreement (mean pairwise
    similarity) below ``threshold`` flags the answer or falls back."""

    trials: int = Field(default=3, ge=2, le=10)
    threshold: float = Field(default=0.95, ge=0, le=1)
    on_low: Literal["flag", "fallback"] = Field(
        default="flag",
        description="flag: answer the first trial with x-guarita-consistency '<score>; low'; "
        "fallback: answer the agent's first fallback model, else the static reply.",
    )
