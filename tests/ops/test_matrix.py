"""The change-type decision matrix and the rollout settings' validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from guarita.errors import ConfigError, InvalidRequest
from guarita.ops.matrix import plan_for
from guarita.settings import (
    CanaryPolicy,
    ChangeTypeRule,
    RolloutSettings,
    ShadowPolicy,
    load_settings,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GUARITA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no ./guarita.yaml


def test_default_matrix() -> None:
    settings = RolloutSettings()
    new_model = plan_for("new_model", settings)
    assert new_model.strategy == "shadow_then_canary" and new_model.shadow_first
    assert new_model.stages == (5, 25, 50, 100)
    assert new_model.human_approval and new_model.rollback == "auto"
    assert new_model.monitoring_window_s == 24 * 3600
    prompt = plan_for("prompt_update", settings)
    assert prompt.strategy == "canary" and not prompt.human_approval
    config = plan_for("config_change", settings)
    assert config.strategy == "fast_canary" and config.stages == (25, 100)
    assert config.canary.stages == (25, 100)  # the policy canary_decision gets
    hotfix = plan_for("security_hotfix", settings)
    assert hotfix.strategy == "immediate" and hotfix.stages == (100,)
    assert hotfix.review_after and hotfix.rollback == "manual"


def test_unknown_change_type_is_a_400_on_change_type() -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan_for("yolo", RolloutSettings())
    assert caught.value.param == "change_type"
    assert "new_model" in caught.value.message  # names the known ones


def test_configured_rules_and_the_whole_settings_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        "rollouts": {
            "canary": {"min_samples": 100, "max_samples": 800},
            "change_types": {
                "prompt_update": {"strategy": "canary", "stages": [10, 50, 100],
                                  "min_samples": 300, "human_approval": True},
            },
        }
    }  # fmt: skip
    path = tmp_path / "guarita.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("GUARITA_CONFIG", str(path))
    settings = load_settings()
    plan = plan_for("prompt_update", settings)
    assert plan.stages == (10, 50, 100) and plan.human_approval
    assert plan.min_samples == plan.canary.min_samples == 300
    assert plan.canary.max_samples == 800
    with pytest.raises(InvalidRequest):
        plan_for("new_model", settings)  # the configured matrix replaces the default one


@pytest.mark.parametrize(
    "stages",
    [(25, 5, 100), (5, 25, 50), (5, 5, 100), (0, 100), (50, 150), ()],
)
def test_stages_must_increase_and_end_at_100(stages: tuple[int, ...]) -> None:
    with pytest.raises(ValidationError, match="stages"):
        CanaryPolicy(stages=stages)


def test_thresholds_must_be_in_range() -> None:
    for bad in ({"max_error_rate": 1.5}, {"min_quality": -0.1}, {"max_p95_ms": 0},
                {"alpha": 0.7}, {"power": 0.3}, {"min_samples": 400, "max_samples": 200},
                {"min_samples": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            CanaryPolicy.model_validate(bad)
    with pytest.raises(ValidationError, match="approve_similarity"):
        ShadowPolicy(approve_similarity=0.8, reject_similarity=0.85)
    with pytest.raises(ValidationError, match="approve_error_rate"):
        ShadowPolicy(approve_error_rate=0.1)
    with pytest.raises(ValidationError, match="immediate"):
        ChangeTypeRule(strategy="immediate", stages=(50, 100))
    with pytest.raises(ValidationError, match="below 100"):
        ChangeTypeRule(strategy="canary", stages=(100,))
    with pytest.raises(ValidationError):
        RolloutSettings.model_validate({"canary": {"stages": [5, 25]}, "nonsense": 1})


def test_a_bad_rollout_setting_names_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "guarita.yaml"
    path.write_text(yaml.safe_dump({"rollouts": {"canary": {"stages": [50, 25, 100]}}}))
    monkeypatch.setenv("GUARITA_CONFIG", str(path))
    with pytest.raises(ConfigError, match=r"rollouts\.canary\.stages"):
        load_settings()
