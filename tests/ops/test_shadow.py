"""Shadow rollouts on a real Runtime (both run modes) with scripted candidates: one that
hangs and one that always fails leave the live answer alone (the live call is over while
the mirror is still pending), mirrors are charged to no key and written to no session,
and the verdict moves the rollout (approve with a person, reject)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guarita.runtime import Runtime
from guarita.types import Caller
from tests.helpers import query
from tests.ops.rollout_support import ask, rollout_settings

CALLER = Caller(key_id="key-1", name="someone", tier="pro", auth="key")


@pytest.fixture
async def runtime(tmp_path: Path, store_url: str, redis_prefix: str) -> AsyncIterator[Runtime]:
    runtime = Runtime(rollout_settings(tmp_path, store_url, redis_prefix))
    await runtime.start()
    yield runtime
    await runtime.aclose()


async def live(runtime: Runtime, session_id: str, message: str = "What is the capital of France?"
               ) -> str:  # fmt: skip
    result = await runtime.agents.chat(message, caller=CALLER, agent_name="plain",
                                       request_id=f"live-{session_id}-{len(message)}",
                                       session_id=session_id)  # fmt: skip
    return result.response


async def test_a_hanging_candidate_leaves_the_live_answer_alone(runtime: Runtime) -> None:
    rollout = await runtime.rollouts.start("plain", "new_model", candidate_model="hangs",
                                           actor="ana")  # fmt: skip
    assert (rollout.state, rollout.percent) == ("shadow", 0)
    answers = [await live(runtime, f"s{i}") for i in range(3)]
    # every live call is over, and its mirror has not answered (it never will)
    assert answers == ["echo: What is the capital of France?"] * 3
    assert runtime.shadow.pending == 3 and runtime.shadow.in_flight == 2
    await runtime.records.flush()
    assert await runtime.rollouts.store.shadow_pairs(rollout.id) == ([], [])


async def test_a_failing_candidate_is_mirrored_charged_to_no_one_and_kept_out_of_sessions(
    runtime: Runtime, store_url: str
) -> None:
    rollout = await runtime.rollouts.start("plain", "new_model", candidate_model="broken",
                                           actor="ana")  # fmt: skip
    assert await live(runtime, "one") == "echo: What is the capital of France?"
    assert await live(runtime, "one", "And of Spain?") == "echo: And of Spain?"
    await runtime.shadow.drain()
    pairs, selves = await runtime.rollouts.store.shadow_pairs(rollout.id)
    assert [(p.live_ok, p.candidate_ok, p.similarity) for p in pairs] == [(True, False, None)] * 2
    assert selves == [1.0, 1.0]  # the stable version, run again, says the same
    found = await runtime.sessions.owner_and_history("one")
    assert found is not None
    owner, turns = found
    assert owner == "key-1" and [t.content for t in turns] == [
        "What is the capital of France?", "echo: What is the capital of France?",
        "And of Spain?", "echo: And of Spain?"]  # fmt: skip
    await runtime.records.flush()
    rows = await query(store_url, "SELECT key_id, endpoint, variant, rollout_id, status FROM "
                       "requests ORDER BY created_at")  # fmt: skip
    mine = [r for r in rows if r["key_id"] == "key-1"]
    assert {r["endpoint"] for r in mine} == {"api.chat"} and len(mine) == 2
    mirrors = [r for r in rows if r["endpoint"].startswith("rollout.")]
    assert {(r["key_id"], r["variant"], r["rollout_id"]) for r in mirrors} == {
        (None, "shadow", rollout.id)}  # fmt: skip
    assert {r["endpoint"] for r in mirrors} == {"rollout.shadow", "rollout.shadow_stable"}
    report = await runtime.rollouts.report(rollout.id)
    assert report["shadow"]["figures"]["pairs"] == 2
    assert report["shadow"]["verdict"] == "REVIEW"  # under min_pairs


async def test_a_shadow_verdict_moves_the_rollout(runtime: Runtime) -> None:
    twin = await runtime.rollouts.start("plain", "new_model", candidate_model="twin",
                                        actor="ana")  # fmt: skip
    await ask(runtime, "plain", 12)
    await runtime.shadow.drain()
    [waiting] = await runtime.rollout_evaluator.evaluate_once()
    assert (waiting.id, waiting.state, waiting.percent) == (twin.id, "awaiting_approval", 0)
    approved = await runtime.rollouts.approve(twin.id, actor="bea")
    assert (approved.state, approved.stage, approved.percent) == ("canary", 0, 50)
    await runtime.rollouts.abort(twin.id, actor="bea")

    off = await runtime.rollouts.start("plain", "new_model", candidate_model="offtopic",
                                       actor="ana")  # fmt: skip
    await ask(runtime, "plain", 12)
    await runtime.shadow.drain()
    [rejected] = await runtime.rollout_evaluator.evaluate_once()
    assert (rejected.state, rejected.in_effect) == ("rolled_back", False)
    decisions = await runtime.rollouts.store.decisions(off.id)
    assert [d["action"] for d in decisions] == ["start", "rollback"]
    assert any("similarity" in r for r in decisions[-1]["reasons"])
