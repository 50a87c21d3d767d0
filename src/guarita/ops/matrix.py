"""The change-type decision matrix: what kind of change (a new model, a prompt update, a
configuration change, a security hotfix) is rolled out how. The rows are settings
(``rollouts.change_types``); ``guarita rollout start --change-type`` takes its plan here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from guarita.errors import InvalidRequest
from guarita.settings_rollouts import CanaryPolicy, RollbackRule, RolloutSettings, Strategy

if TYPE_CHECKING:
    from guarita.settings import Settings


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    change_type: str
    strategy: Strategy
    stages: tuple[int, ...]  # (100,) for an immediate change
    min_samples: int
    monitoring_window_s: float
    rollback: RollbackRule
    human_approval: bool  # each promotion waits for a person
    review_after: bool
    canary: CanaryPolicy  # the policy canary_decision gets: the plan's stages and samples

    @property
    def shadow_first(self) -> bool:
        return self.strategy == "shadow_then_canary"


def plan_for(change_type: str, settings: RolloutSettings | Settings) -> RolloutPlan:
    """The plan for a change type; an unknown type is a 400 naming the known ones."""
    rollouts = settings if isinstance(settings, RolloutSettings) else settings.rollouts
    rule = rollouts.change_types.get(change_type)
    if rule is None:
        known = ", ".join(sorted(rollouts.change_types)) or "none configured"
        raise InvalidRequest(
            f"Unknown change type {change_type!r} (known: {known}).",
            code="unknown_change_type",
            param="change_type",
        )
    if rule.strategy == "immediate":
        stages: tuple[int, ...] = (100,)
    else:
        stages = rule.stages or rollouts.canary.stages
    min_samples = rule.min_samples or rollouts.canary.min_samples
    # an immediate plan keeps the default canary stages in its policy (it is never tested)
    update: dict[str, object] = {"min_samples": min_samples}
    if stages != (100,):
        update["stages"] = stages
    if rollouts.canary.max_samples < min_samples:
        update["max_samples"] = min_samples
    canary = CanaryPolicy.model_validate({**rollouts.canary.model_dump(), **update})
    return RolloutPlan(
        change_type=change_type,
        strategy=rule.strategy,
        stages=stages,
        min_samples=min_samples,
        monitoring_window_s=rule.monitoring_window_s,
        rollback=rule.rollback,
        human_approval=rule.human_approval,
        review_after=rule.review_after,
        canary=canary,
    )
