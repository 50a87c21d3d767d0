"""The rollout evaluator: a background service that judges every rollout in effect each
``rollouts.evaluate_every_s`` and acts on the verdict.

Every API process runs one. A verdict is acted on by compare-and-swap on the rollout's
version (:meth:`RolloutService.move`), so when several processes judge the same samples
at once one acts and the others find the rollout moved. A canary stage is judged on the
samples of both arms since the stage began (``canary_decision`` with the plan's policy);
a shadow on its mirrored pairs (``shadow_report``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError

from guarita.aio import cancel_and_wait
from guarita.errors import DeployFrozen, GuaritaError
from guarita.ops.decide import Action, ShadowVerdict, canary_decision, shadow_report
from guarita.ops.rollouts import RolloutService, policy_of
from guarita.settings_rollouts import RolloutSettings
from guarita.store.rollouts import DecisionFacts, Rollout

if TYPE_CHECKING:
    from guarita.store.drift import Evaluation

log = structlog.get_logger("guarita.rollouts")


class Drains(Protocol):
    async def drain(self) -> None: ...


class RolloutEvaluator:
    def __init__(
        self, service: RolloutService, settings: RolloutSettings, *, pending: list[Drains],
    ) -> None:  # fmt: skip
        """``pending``: what holds this process's samples and pairs before the store."""
        self._service = service
        self._pending = pending
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollout-evaluator")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.evaluate_every_s)
            try:
                await self.evaluate_once(flush=False)
            except (SQLAlchemyError, OSError, GuaritaError) as exc:
                log.warning("rollout_evaluation_failed", error=type(exc).__name__)
            except Exception:  # the service must outlive a bug in one evaluation
                log.exception("rollout_evaluation_crashed")

    async def evaluate_once(self, *, flush: bool = True) -> list[Rollout]:
        """Judge every rollout in effect now; the ones this process moved. ``flush``:
        first write this process's pending samples (tests; the period does it otherwise)."""
        if flush:
            for pending in self._pending:
                await pending.drain()
        moved = []
        for rollout in await self._service.store.in_effect():
            if rollout.state == "canary":
                done = await self._judge_stage(rollout)
            elif rollout.state == "shadow":
                done = await self._judge_shadow(rollout)
            else:
                continue
            if done is not None:
                moved.append(done)
        return moved

    async def _judge_stage(self, rollout: Rollout) -> Rollout | None:
        samples = await self._service.store.stage_samples(rollout.id, rollout.stage)
        decision = canary_decision(samples.stable, samples.candidate, policy_of(rollout))
        figures = {**decision.figures, "percent": rollout.percent}
        facts = DecisionFacts(decision.action.value, decision.reasons, figures)
        if decision.action is Action.HOLD:
            await self._note(rollout, facts)
            return None
        if decision.action is Action.ROLLBACK:
            return await self._roll_back(rollout, facts)
        if not await self._may_promote(rollout, facts):
            return None
        if rollout.plan.get("human_approval"):
            waiting = DecisionFacts("await_approval", decision.reasons,
                                    {**figures, "pending": "promote"})  # fmt: skip
            return await self._service.move(rollout, waiting, state="awaiting_approval")
        return await self._service.promote(rollout, facts)

    async def _may_promote(self, rollout: Rollout, facts: DecisionFacts) -> bool:
        """False, and a hold noted with the freeze's reason, while deploys of the agent are
        frozen (docs/slo.md): a promotion waits for the budget, a rollback never does."""
        try:
            await self._service.check_freeze(rollout)
        except DeployFrozen as frozen:
            held = DecisionFacts("hold", (*facts.reasons, frozen.message),
                                 {**facts.figures, "deploy_frozen": True})  # fmt: skip
            await self._note(rollout, held)
            return False
        return True

    async def on_drift(self, agent: str, evaluation: Evaluation) -> None:
        """The drift evaluator's ``on_urgent`` hook: an agent whose answers drifted to
        urgent_rollback while a canary serves part of them has the canary rolled back
        (by the plan's rollback rule: a manual one pauses and advises)."""
        reason = (f"urgent drift of the agent's answers (score {evaluation.score:.2f}, "
                  f"{evaluation.level})")  # fmt: skip
        facts = DecisionFacts("rollback", (reason,), {"drift": evaluation.to_json()}, "drift")
        for rollout in await self._service.store.in_effect():
            if rollout.agent == agent and rollout.state == "canary":
                await self._roll_back(rollout, facts)
        await self._revert_monitored(agent, facts)

    async def on_budget_exhausted(self, agent: str, slo: str) -> None:
        """The deploy freeze's ``on_exhausted`` hook: an agent whose error budget was used up
        within a completed rollout's monitoring window has that change rolled back (a canary
        in progress is held by the freeze instead: docs/rollouts.md)."""
        reason = f"the agent's {slo} error budget was used up within the monitoring window"
        await self._revert_monitored(agent, DecisionFacts("rollback", (reason,), {"slo": slo},
                                                          "slo-evaluator"))  # fmt: skip

    async def _revert_monitored(self, agent: str, facts: DecisionFacts) -> None:
        """Roll back the agent's completed rollouts still in their monitoring window (by the
        plan's rule: a manual one is advised, not rolled back)."""
        for rollout in await self._service.store.recent(agent=agent, limit=10):
            if not rollout.monitored():
                continue
            if rollout.plan.get("rollback") == "manual":
                advised = DecisionFacts("rollback_advised", facts.reasons, facts.figures,
                                        facts.actor)  # fmt: skip
                await self._service.move(rollout, advised)
            else:
                await self._service.revert(rollout, facts)

    async def _judge_shadow(self, rollout: Rollout) -> Rollout | None:
        pairs, selves = await self._service.store.shadow_pairs(rollout.id)
        report = shadow_report(pairs, selves, self._settings.shadow)
        facts = DecisionFacts(f"shadow_{report.verdict.value.lower()}", report.reasons,
                              report.figures)  # fmt: skip
        if report.verdict is ShadowVerdict.REVIEW:
            await self._note(rollout, facts)
            return None
        if report.verdict is ShadowVerdict.REJECT:
            return await self._roll_back(rollout, facts)
        if not await self._may_promote(rollout, facts):
            return None
        if rollout.plan.get("human_approval"):
            waiting = DecisionFacts("await_approval", report.reasons,
                                    {**report.figures, "pending": "canary"})  # fmt: skip
            return await self._service.move(rollout, waiting, state="awaiting_approval")
        return await self._service.move(rollout, facts, state="canary", stage=0)

    async def _roll_back(self, rollout: Rollout, facts: DecisionFacts) -> Rollout | None:
        if rollout.plan.get("rollback") == "manual":  # the plan alerts; a person decides
            advised = DecisionFacts("rollback_advised", facts.reasons,
                                    {**facts.figures, "resume_to": rollout.state},
                                    facts.actor)  # fmt: skip
            return await self._service.move(rollout, advised, state="paused")
        rolled = DecisionFacts("rollback", facts.reasons, facts.figures, facts.actor)
        return await self._service.move(rollout, rolled, state="rolled_back", in_effect=False)

    async def _note(self, rollout: Rollout, facts: DecisionFacts) -> None:
        """A hold changes nothing but the last decision shown (written when its reasons
        change, so the version does not churn)."""
        last = rollout.last_decision or {}
        if last.get("action") == facts.action and last.get("reasons") == list(facts.reasons):
            return
        await self._service.store.transition(
            rollout, None, last_decision={"action": facts.action, "reasons": list(facts.reasons),
                                          "figures": facts.figures, "actor": facts.actor,
                                          "stage": rollout.stage, "state": rollout.state},
        )  # fmt: skip
