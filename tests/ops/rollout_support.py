"""What the rollout tests share: scripted models (a stable one, an identical twin, one
failing every tenth call, one answering off-topic, one that hangs, one that always
fails), agents on them, small policies, and a driver that sends requests and asks the
evaluator until a rollout leaves its state."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from guarita.errors import GuaritaError
from guarita.runtime import Runtime
from guarita.settings import load_settings
from guarita.store.rollouts import Rollout
from guarita.types import Caller
from tests.helpers import REDIS_URL, scale_out

OFF_TOPIC = "Bananas are rich in potassium and grow in tropical climates."
DELAY = 0.005  # every arm answers after about this long, so p95s compare real latencies

# Small policies so that a rollout decides in a few hundred requests. The test limits are
# looser than the defaults where a few dozen samples could never show the default: an
# error rate within 1% needs 161 error-free requests at power 0.8, so 5% here, and the
# scripted latencies are milliseconds of scheduling noise, so a wide latency margin.
CANARY = {
    "stages": [50, 100], "min_samples": 30, "max_samples": 240, "min_scored": 10,
    "max_error_rate": 0.05, "max_error_rate_increase": 0.05, "max_p95_increase": 20.0,
}  # fmt: skip
# every live request mirrored, and run again on the stable version; verdicts on 10 pairs
# (approving an error rate below 1% at 95% takes 300 error-free pairs: 30% here)
SHADOW = {
    "sample_share": 1.0, "self_similarity_share": 1.0, "min_pairs": 10, "timeout_s": 3600,
    "concurrency": 2, "queue_size": 8, "approve_error_rate": 0.3, "reject_error_rate": 0.5,
}  # fmt: skip
CHANGE_TYPES = {
    "prompt_update": {"strategy": "canary"},
    "model_swap": {"strategy": "canary"},
    "new_model": {"strategy": "shadow_then_canary", "human_approval": True},
    "security_hotfix": {"strategy": "immediate", "rollback": "manual"},
}


def scripted(**options: Any) -> dict[str, Any]:
    return {"provider": "scripted", "retry": {"max_attempts": 1},
            "options": {"delay_s": DELAY, **options}}  # fmt: skip


def rollout_settings(
    tmp_path: Path, store_url: str, redis_prefix: str | None = None, **overrides: Any
) -> Any:
    shared: dict[str, Any] = {}
    if scale_out():
        shared = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix or "guarita-test-ro:"}
    config: dict[str, Any] = {
        "data_dir": tmp_path,
        "store": {"url": store_url},
        "models": {
            "stable": scripted(),
            "twin": scripted(),
            "flaky": {**scripted(fail_every=10), "breaker": {"enabled": False}},
            "offtopic": scripted(reply=OFF_TOPIC),
            "hangs": scripted(delay_s=3600),
            "broken": {**scripted(fail_every=1), "breaker": {"enabled": False}},
        },
        "agents": {
            "support": {"model": "stable", "prompt": "support@production"},
            "plain": {"model": "stable", "system_prompt": "You help."},
        },
        "default_agent": "plain",
        "rollouts": {"canary": CANARY, "change_types": CHANGE_TYPES, "evaluate_every_s": 3600,
                     "shadow": SHADOW},
        **shared,
    }  # fmt: skip
    config.update(overrides)
    return load_settings(**config)


async def ask(runtime: Runtime, agent: str, n: int = 1, *, session_id: str | None = None) -> int:
    """``n`` requests (questions that differ); how many failed."""
    failed = 0
    for _ in range(n):
        question = f"What is the capital of France? (asked {secrets.token_hex(3)})"
        try:
            await runtime.agents.chat(question, caller=Caller.anonymous(), agent_name=agent,
                                      request_id=secrets.token_hex(8),
                                      session_id=session_id)  # fmt: skip
        except GuaritaError:
            failed += 1
    return failed


async def drive(runtime: Runtime, rollout: Rollout, *, most: int = 1200) -> tuple[Rollout, int]:
    """Requests in rounds of 20, the evaluator asked after each, until the rollout leaves
    its state and stage (or ``most`` requests); the rollout then, and the requests sent."""
    sent = 0
    while sent < most:
        await ask(runtime, rollout.agent, 20)
        sent += 20
        await runtime.rollout_evaluator.evaluate_once()
        now = await runtime.rollouts.get(rollout.id)
        if (now.state, now.stage) != (rollout.state, rollout.stage):
            return now, sent
    return await runtime.rollouts.get(rollout.id), sent
