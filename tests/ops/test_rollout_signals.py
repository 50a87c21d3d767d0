"""Rollouts and the signals of the other services, on a real Runtime in both run modes
(scripted upstreams): a used-up error budget freezes an agent's deploys (a start and a
promotion refused with the reason, a security hotfix still goes, a lifted freeze lets the
held promotion through); urgent drift of an agent's answers rolls its canary back; and
within a completed change's monitoring window, urgent drift or a used-up budget rolls the
change back (the label moved back), by the plan's rollback rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guarita.errors import DeployFrozen
from guarita.runtime import Runtime
from guarita.store.drift import Evaluation
from guarita.store.rollouts import DecisionFacts
from tests.helpers import query
from tests.ops.rollout_support import CANARY, CHANGE_TYPES, SHADOW, drive, rollout_settings

# immediate changes watched for an hour after they are live, rolled back by the service
# (config_push) or only advised (hotfix: the default matrix's manual rule)
WATCHED = {
    **CHANGE_TYPES,
    "config_push": {"strategy": "immediate", "monitoring_window_s": 3600},
    "unwatched_push": {"strategy": "immediate", "monitoring_window_s": 0},
    "hotfix": {"strategy": "immediate", "rollback": "manual", "monitoring_window_s": 3600},
}


@pytest.fixture
async def runtime(tmp_path: Path, store_url: str, redis_prefix: str) -> AsyncIterator[Runtime]:
    # drift on (the hook it offers is what is tested; plain, the canary here, is not sampled)
    rollouts = {"canary": CANARY, "shadow": SHADOW, "change_types": WATCHED,
                "evaluate_every_s": 3600}  # fmt: skip
    settings = rollout_settings(tmp_path, store_url, redis_prefix, rollouts=rollouts,
                                drift={"enabled": True, "agents": ["support"]})  # fmt: skip
    runtime = Runtime(settings)
    await runtime.start()
    # the test plays the SLO service (below, `freeze`): its own evaluation, which would
    # find the budget healthy and lift the freeze, is stopped
    await runtime.slo.aclose()
    await runtime.prompts.push("support", "You help (v1).", actor="test")
    await runtime.prompts.move_label("support", "production", 1, actor="test")
    await runtime.prompts.push("support", "You help (v2).", actor="test")
    yield runtime
    await runtime.aclose()


async def freeze(runtime: Runtime, agent: str) -> None:
    """The agent's availability budget used up, as the SLO service records it."""
    assert await runtime.freeze.states.move(agent, "availability", "ok", "exhausted", 1.25)


async def test_a_frozen_agent_starts_no_rollout_but_a_security_hotfix(runtime: Runtime) -> None:
    await freeze(runtime, "plain")
    with pytest.raises(DeployFrozen) as refused:
        await runtime.rollouts.start("plain", "model_swap", candidate_model="twin", actor="ana")
    assert refused.value.status_code == 409 and refused.value.code == "deploy_frozen"
    assert "'plain'" in refused.value.message and "availability" in refused.value.message
    assert await runtime.rollouts.list(agent="plain") == []
    hotfix = await runtime.rollouts.start("plain", "security_hotfix", candidate_model="twin",
                                          actor="ana")  # fmt: skip
    assert (hotfix.state, hotfix.percent) == ("completed", 100)


async def test_a_promotion_waits_while_the_budget_is_used_up(
    runtime: Runtime, store_url: str
) -> None:
    rollout = await runtime.rollouts.start("plain", "model_swap", candidate_model="twin",
                                           actor="ana")  # fmt: skip
    await freeze(runtime, "plain")
    held, _ = await drive(runtime, rollout, most=240)
    assert (held.state, held.stage) == ("canary", 0), held
    assert held.last_decision is not None and held.last_decision["figures"]["deploy_frozen"]
    assert any("frozen" in r for r in held.last_decision["reasons"]), held.last_decision
    with pytest.raises(DeployFrozen):  # nor may a person promote it
        await runtime.rollouts.promote(held, DecisionFacts("approve", (), {}, "ana"))
    # the budget recovers: the held promotion goes through
    assert await runtime.freeze.states.move("plain", "availability", "exhausted", "ok", 0.1)
    done, _ = await drive(runtime, held)
    assert (done.state, done.percent) == ("completed", 100), done
    rows = await query(store_url, "SELECT action FROM rollout_decisions WHERE rollout_id = :r "
                       "ORDER BY id", r=rollout.id)  # fmt: skip
    assert [r["action"] for r in rows] == ["start", "complete"]


async def test_urgent_drift_rolls_the_agents_canary_back(runtime: Runtime, store_url: str) -> None:
    rollout = await runtime.rollouts.start("plain", "model_swap", candidate_model="twin",
                                           actor="ana")  # fmt: skip
    assert runtime.drift is not None
    urgent = Evaluation("plain", "output", datetime.now(UTC), "urgent_rollback", 0.8, {})
    other = Evaluation("support", "output", datetime.now(UTC), "urgent_rollback", 0.8, {})
    hooks = runtime.drift.evaluator.hooks
    assert hooks, "the rollout evaluator listens to urgent drift"
    for hook in hooks:
        await hook("support", other)  # another agent's drift leaves this canary alone
    assert (await runtime.rollouts.get(rollout.id)).state == "canary"
    for hook in hooks:
        await hook("plain", urgent)
    after = await runtime.rollouts.get(rollout.id)
    assert (after.state, after.in_effect) == ("rolled_back", False), after
    rows = await query(store_url, "SELECT action, actor FROM rollout_decisions WHERE "
                       "rollout_id = :r ORDER BY id", r=rollout.id)  # fmt: skip
    assert rows[-1] == {"action": "rollback", "actor": "drift"}
    assert any("urgent drift" in r for r in after.last_decision["reasons"])


def urgent(agent: str) -> Evaluation:
    return Evaluation(agent, "output", datetime.now(UTC), "urgent_rollback", 0.8, {})


async def label(runtime: Runtime) -> int:
    return (await runtime.prompts.resolve("support@production")).version


async def test_urgent_drift_in_the_monitoring_window_rolls_the_change_back(
    runtime: Runtime, store_url: str
) -> None:
    live = await runtime.rollouts.start("support", "config_push", candidate_prompt="support@2",
                                        actor="ana")  # fmt: skip
    assert live.state == "completed" and await label(runtime) == 2
    assert live.monitored() and live.to_json()["monitoring_until"] is not None
    assert runtime.drift is not None
    for hook in runtime.drift.evaluator.hooks:
        await hook("support", urgent("support"))
    after = await runtime.rollouts.get(live.id)
    assert (after.state, after.in_effect) == ("rolled_back", False)
    assert await label(runtime) == 1  # the label is back on the stable version
    rows = await query(store_url, "SELECT action, actor FROM rollout_decisions WHERE "
                       "rollout_id = :r ORDER BY id", r=live.id)  # fmt: skip
    assert [r["action"] for r in rows] == ["start", "complete", "rollback"]
    assert rows[-1]["actor"] == "drift"


async def test_a_used_up_budget_in_the_monitoring_window_rolls_the_change_back(
    runtime: Runtime,
) -> None:
    live = await runtime.rollouts.start("plain", "config_push", candidate_model="twin",
                                        actor="ana")  # fmt: skip
    assert (live.state, live.in_effect) == ("completed", True)  # the model is routed
    # the SLO evaluation finds the budget used up: the freeze's hook fires once
    statuses = await runtime.slo.evaluator.evaluate("plain")
    availability = next(s for s in statuses if s.slo == "availability")
    availability.budget, availability.consumed = "exhausted", 1.3
    won = await runtime.freeze.update([availability])
    assert [t.after for t in won] == ["exhausted"]
    after = await runtime.rollouts.get(live.id)
    assert (after.state, after.in_effect, after.percent) == ("rolled_back", False, 0)
    assert "error budget" in after.last_decision["reasons"][0]


async def test_outside_a_window_or_with_a_manual_rule_nothing_is_rolled_back(
    runtime: Runtime,
) -> None:
    unwatched = await runtime.rollouts.start("plain", "unwatched_push", candidate_model="twin",
                                             actor="ana")  # fmt: skip
    assert unwatched.monitoring_until is None and not unwatched.monitored()
    assert runtime.drift is not None
    for hook in runtime.drift.evaluator.hooks:
        await hook("plain", urgent("plain"))
    assert (await runtime.rollouts.get(unwatched.id)).state == "completed"
    await runtime.rollouts.abort(unwatched.id, actor="ana")  # the agent is free again

    hotfix = await runtime.rollouts.start("support", "hotfix", candidate_prompt="support@2",
                                          actor="ana")  # fmt: skip
    for hook in runtime.drift.evaluator.hooks:
        await hook("support", urgent("support"))
    after = await runtime.rollouts.get(hotfix.id)
    assert after.state == "completed" and await label(runtime) == 2
    assert after.last_decision is not None
    assert after.last_decision["action"] == "rollback_advised"
