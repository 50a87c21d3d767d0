"""Rollouts of an agent's candidate prompt version and/or model (docs/rollouts.md): started
by change type (the decision matrix, ``guarita.ops.matrix``), routed per request, judged
by the evaluator (``guarita.ops.rollout_evaluator``) and moved by people (pause, resume,
abort, approve).

Every process knows the rollouts in effect within 1 s: :class:`ActiveRollouts` keeps
them at most ``ttl_s`` and empties at once when a change is announced on the shared
state's broadcast (``rollouts`` channel). State lives in the store, so it survives a
restart; a move is a compare-and-swap on the rollout's version, so of several processes
deciding at once one acts. Each move is a decision row, an event, an audit entry and a
metric (:meth:`RolloutService.move`).

Lifecycle: ``shadow`` (only ``shadow_then_canary``) -> ``canary`` (stage by stage) ->
``completed``; ``awaiting_approval`` when a plan needs a person for a promotion; ``paused``
by a person; ``rolled_back`` by the service; ``aborted`` by a person.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import structlog
from sqlalchemy.exc import SQLAlchemyError

from guarita.errors import AgentNotFound, Conflict, InvalidRequest, ModelNotFound
from guarita.ops.decide import canary_decision, shadow_report
from guarita.ops.matrix import RolloutPlan, plan_for
from guarita.ops.prompts import PromptRegistry, parse_ref
from guarita.settings_rollouts import CanaryPolicy
from guarita.state import Broadcast
from guarita.state.listener import Listener
from guarita.store.rollouts import (
    ACTIVE_STATES,
    DecisionFacts,
    Rollout,
    RolloutStore,
    active_conflict,
)

if TYPE_CHECKING:
    from guarita.settings import Settings
    from guarita.telemetry.metrics import Metrics

log = structlog.get_logger("guarita.rollouts")

CHANNEL = "rollouts"
"""Where a rollout's move is announced to every process."""
ROLLOUT_DECIDED = "guarita.rollout.decided"
MAX_TTL_S = 1.0

Variant = Literal["stable", "canary"]
Audit = Callable[..., None]
Publish = Callable[[str, dict[str, Any]], None]
FreezeCheck = Callable[[str, str, Literal["start", "promote"]], Awaitable[None]]
"""``DeployFreeze.check(agent, change_type, action)`` (docs/slo.md): raises
:class:`~guarita.errors.DeployFrozen` while the agent's error budget is used up."""


def plan_json(plan: RolloutPlan) -> dict[str, Any]:
    return {
        "change_type": plan.change_type, "strategy": plan.strategy, "stages": list(plan.stages),
        "min_samples": plan.min_samples, "monitoring_window_s": plan.monitoring_window_s,
        "rollback": plan.rollback, "human_approval": plan.human_approval,
        "review_after": plan.review_after, "canary": plan.canary.model_dump(mode="json"),
    }  # fmt: skip


def assign(
    rollout: Rollout, session_id: str | None, key_id: str | None, request_id: str
) -> Variant:
    """Sticky: the same session (else key, else request) gets the same arm for the whole
    stage, and keeps the candidate as the stage grows (the hash is against the percent)."""
    percent = rollout.percent
    if percent <= 0:
        return "stable"
    if percent >= 100:
        return "canary"
    who = session_id or key_id or request_id
    digest = hashlib.blake2b(f"{rollout.id}:{who}".encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") / 2**64 * 100
    return "canary" if bucket < percent else "stable"


@dataclass(frozen=True, slots=True)
class Route:
    """How one request of an agent in a rollout is served."""

    rollout: Rollout
    variant: Variant
    prompt_ref: str | None
    """The prompt version to render (None: the agent's own, or its inline prompt)."""
    model: str | None
    """The model to call instead of the agent's (the prompt version's otherwise)."""

    @property
    def stage(self) -> int:
        return self.rollout.stage

    @property
    def mirrored(self) -> bool:
        """In shadow: the live answer is the stable one; a sample is mirrored."""
        return self.rollout.state == "shadow"


class ActiveRollouts:
    """The rollouts in effect, per agent, as this process knows them (at most ``ttl_s``
    old, emptied when a move is announced)."""

    def __init__(self, store: RolloutStore, broadcast: Broadcast | None, *, ttl_s: float) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S}]")
        self._store = store
        self._ttl = ttl_s
        self._by_agent: dict[str, Rollout] = {}
        self._expires = 0.0
        self._generation = 0
        self._listener = (
            Listener(broadcast, CHANNEL, lambda _m: self.invalidate(),
                     on_subscribed=self.invalidate)
            if broadcast is not None else None
        )  # fmt: skip

    async def start(self) -> None:
        if self._listener is not None:
            await self._listener.start()

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()

    def invalidate(self) -> None:
        self._generation += 1
        self._expires = 0.0

    async def by_agent(self) -> dict[str, Rollout]:
        """A store that cannot be read keeps the last rollouts known (for another TTL): a
        chat must not fail because its rollout could not be looked up."""
        if time.monotonic() < self._expires:
            return self._by_agent
        generation = self._generation
        try:
            found = {r.agent: r for r in await self._store.in_effect()}
        except (SQLAlchemyError, OSError) as exc:
            log.warning("rollouts_unreadable", error=type(exc).__name__)
            self._expires = time.monotonic() + self._ttl
            return self._by_agent
        self._by_agent = found
        if generation == self._generation:  # not invalidated meanwhile: kept for the TTL
            self._expires = time.monotonic() + self._ttl
        return found

    async def get(self, agent: str) -> Rollout | None:
        return (await self.by_agent()).get(agent)


class RolloutService:
    def __init__(
        self, settings: Settings, store: RolloutStore, *, prompts: PromptRegistry,
        broadcast: Broadcast | None, metrics: Metrics, audit: Audit | None = None,
        publish: Publish | None = None, ttl_s: float = 0.5, freeze: FreezeCheck | None = None,
    ) -> None:  # fmt: skip
        """``freeze``: asked before a rollout starts and before each promotion."""
        self._freeze = freeze
        self._settings = settings
        self.store = store
        self._prompts = prompts
        self._broadcast = broadcast
        self._metrics = metrics
        self._audit = audit
        self._publish = publish
        self.active = ActiveRollouts(store, broadcast, ttl_s=ttl_s)

    # -- routing (the hot path) ----------------------------------------------------------

    async def route(
        self, agent: str, *, session_id: str | None, key_id: str | None, request_id: str
    ) -> Route | None:
        """The arm of this request, when the agent has a rollout in effect."""
        rollout = await self.active.get(agent)
        if rollout is None:
            return None
        variant = assign(rollout, session_id, key_id, request_id)
        if variant == "canary":
            return Route(rollout, variant, rollout.candidate_prompt or rollout.stable_prompt,
                         rollout.candidate_model or None)  # fmt: skip
        return Route(rollout, variant, rollout.stable_prompt, None)

    # -- starting ------------------------------------------------------------------------

    async def start(
        self, agent: str, change_type: str, candidate_prompt: str | None = None,
        candidate_model: str | None = None, *, actor: str,
    ) -> Rollout:  # fmt: skip
        """Start a rollout by the change type's plan: 400 for an unknown change type or a
        candidate that is no change, 404 for an unknown agent, prompt version or model, 409
        when the agent has a rollout in effect."""
        plan = plan_for(change_type, self._settings)
        settings = self._settings.agents.get(agent)
        if settings is None:
            known = ", ".join(sorted(self._settings.agents)) or "none"
            raise AgentNotFound(f"agent {agent!r} does not exist (known: {known})", param="agent")
        if candidate_prompt is None and candidate_model is None:
            raise InvalidRequest("a rollout needs a candidate prompt version or model",
                                 code="candidate_required", param="candidate_prompt")  # fmt: skip
        if self._freeze is not None:  # 409 deploy_frozen, unless the change type is exempt
            await self._freeze(agent, change_type, "start")
        stable_prompt, stable_model = await self._stable_of(agent)
        if candidate_prompt is not None:
            candidate_prompt = await self._check_prompt(agent, candidate_prompt, stable_prompt)
        if candidate_model is not None and candidate_model not in self._settings.models:
            known = ", ".join(sorted(self._settings.models))
            raise ModelNotFound(f"model {candidate_model!r} is not configured (known: {known})",
                                param="candidate_model")  # fmt: skip
        if candidate_prompt is None and candidate_model == stable_model:
            raise InvalidRequest(f"model {candidate_model!r} is the agent's own: no change",
                                 code="candidate_is_stable", param="candidate_model")  # fmt: skip
        await self._release_settled(agent)
        now = datetime.now(UTC)
        state = "shadow" if plan.shadow_first else "canary"
        rollout = Rollout(
            id="ro_" + secrets.token_hex(8), agent=agent, change_type=change_type,
            strategy=plan.strategy, candidate_prompt=candidate_prompt,
            candidate_model=candidate_model, stable_prompt=stable_prompt,
            stable_model=stable_model, plan=plan_json(plan), stage=0, state=state,
            stage_started_at=now, version=1, created_by=actor, created_at=now,
            updated_at=now, last_decision=None, in_effect=True,
        )  # fmt: skip
        facts = DecisionFacts("start", (f"{change_type}: {plan.strategy}",),
                              {"stages": list(plan.stages)}, actor)  # fmt: skip
        created = await self.store.create(rollout, facts)
        await self._moved(created, facts)
        if plan.strategy == "immediate":
            done = await self.promote(created, DecisionFacts(
                "complete", ("immediate: straight to 100%",), {}, actor))  # fmt: skip
            return done or await self.store.get(created.id)
        return created

    async def _stable_of(self, agent: str) -> tuple[str | None, str]:
        """The agent's prompt version (pinned) and model now."""
        settings = self._settings.agents[agent]
        if settings.prompt is None:
            return None, settings.model
        version = await self._prompts.resolve(settings.prompt)
        return version.ref, version.model_config.model or settings.model

    async def _check_prompt(self, agent: str, ref: str, stable: str | None) -> str:
        own = self._settings.agents[agent].prompt
        name, pin = parse_ref(ref)
        if not isinstance(pin, int):
            raise InvalidRequest(
                f"candidate prompt {ref!r}: name a version (NAME@VERSION)",
                code="candidate_not_a_version",
                param="candidate_prompt",
            )
        own_name, own_pin = parse_ref(own) if own else (None, None)
        if own_name != name or isinstance(own_pin, int):
            raise InvalidRequest(
                f"candidate prompt {ref!r}: agent {agent!r} must name prompt {name!r} by a "
                f"label (it names {own or 'an inline system prompt'})",
                code="candidate_prompt_mismatch", param="candidate_prompt",
            )  # fmt: skip
        version = await self._prompts.resolve(ref)  # 404 prompt_not_found
        if version.ref == stable:
            raise InvalidRequest(
                f"candidate prompt {ref!r} is the agent's own: no change",
                code="candidate_is_stable",
                param="candidate_prompt",
            )
        return version.ref

    async def _release_settled(self, agent: str) -> None:
        """A completed model rollout stays in effect (the model is the agent's setting) until
        the settings name its model; then it gives way to a new rollout."""
        current = await self.active.get(agent)
        current = current if current is None else await self.store.get(current.id)
        if current is None or not current.in_effect:
            return
        settled = current.state == "completed" and current.candidate_model == (
            self._settings.agents[agent].model
        )
        if not settled:
            raise active_conflict(agent)
        await self.store.transition(current, None, in_effect=False)
        self.active.invalidate()

    # -- moves ---------------------------------------------------------------------------

    async def move(self, rollout: Rollout, facts: DecisionFacts, **changes: Any) -> Rollout | None:
        """Move ``rollout`` (compare-and-swap) and, if this process did, tell everyone: the
        decision row (with the move), an event, an audit entry, the metrics, the broadcast."""
        moved = await self.store.transition(rollout, facts, **changes)
        if moved is not None:
            await self._moved(moved, facts)
        return moved

    async def _moved(self, rollout: Rollout, facts: DecisionFacts) -> None:
        details = {"agent": rollout.agent, "action": facts.action, "state": rollout.state,
                   "stage": rollout.stage, "percent": rollout.percent,
                   "reasons": list(facts.reasons)}  # fmt: skip
        if self._audit is not None:
            self._audit("change", f"rollout.{facts.action}", facts.actor, rollout.id, "success",
                        details=details)  # fmt: skip
        if self._publish is not None:
            self._publish(ROLLOUT_DECIDED, {"rollout_id": rollout.id, "actor": facts.actor,
                                            **details})  # fmt: skip
        m = self._metrics
        m.child(m.rollout_decisions, rollout.agent, facts.action).inc()
        m.child(m.rollout_stage_percent, rollout.agent).set(rollout.percent)
        log.info("rollout_decided", rollout_id=rollout.id, actor=facts.actor, **details)
        self.active.invalidate()
        if self._broadcast is not None:
            await self._broadcast.publish(CHANNEL, rollout.id.encode())

    async def promote(self, rollout: Rollout, facts: DecisionFacts) -> Rollout | None:
        """The next stage; from the last tested one, 100%: the agent's label moved to a
        prompt candidate, and the rollout completed."""
        await self.check_freeze(rollout)
        stages = rollout.stages
        following = rollout.stage + 1
        if rollout.strategy != "immediate" and stages[min(following, len(stages) - 1)] < 100:
            return await self.move(rollout, facts, state="canary", stage=following)
        final = len(stages) - 1
        done = DecisionFacts("complete", facts.reasons, facts.figures, facts.actor)
        moved = await self.move(rollout, done, state="completed", stage=final,
                                in_effect=rollout.candidate_model is not None)  # fmt: skip
        if moved is None or rollout.candidate_prompt is None:
            return moved
        return await self._move_label(moved)

    async def check_freeze(self, rollout: Rollout) -> None:
        """Raise :class:`~guarita.errors.DeployFrozen` when the rollout may not be promoted
        now (its agent's error budget is used up and its change type is not exempt)."""
        if self._freeze is not None and rollout.strategy != "immediate":
            await self._freeze(rollout.agent, rollout.change_type, "promote")

    async def _move_label(self, rollout: Rollout) -> Rollout:
        own = self._settings.agents[rollout.agent].prompt
        assert own is not None and rollout.candidate_prompt is not None
        name, label = parse_ref(own)
        _, candidate = parse_ref(rollout.candidate_prompt)
        _, stable = parse_ref(rollout.stable_prompt or "")
        assert isinstance(candidate, int) and isinstance(label, str)
        try:
            await self._prompts.move_label(
                name, label, candidate, expected=stable if isinstance(stable, int) else None,
                actor=f"rollout:{rollout.id}",
            )  # fmt: skip
        except Conflict as exc:
            facts = DecisionFacts("label_move_failed", (exc.message,), {"pending": "promote"},
                                  "service")  # fmt: skip
            moved = await self.move(rollout, facts, state="awaiting_approval",
                                    stage=len(rollout.stages) - 2, in_effect=True)  # fmt: skip
            return moved or rollout
        return rollout

    async def revert(self, rollout: Rollout, facts: DecisionFacts) -> Rollout | None:
        """Roll back a completed rollout (in its monitoring window): the candidate model no
        longer routed, the agent's label moved back from the candidate version to the stable
        one (compare-and-swap: a label moved by someone since is left, and said so)."""
        moved = await self.move(rollout, facts, state="rolled_back", in_effect=False)
        if moved is None or rollout.candidate_prompt is None:
            return moved
        own = self._settings.agents[rollout.agent].prompt
        _, candidate = parse_ref(rollout.candidate_prompt)
        _, stable = parse_ref(rollout.stable_prompt or "")
        if own is None or not isinstance(candidate, int) or not isinstance(stable, int):
            return moved
        name, label = parse_ref(own)
        try:
            await self._prompts.move_label(name, str(label), stable, expected=candidate,
                                           actor=f"rollout:{rollout.id}")  # fmt: skip
        except Conflict as exc:
            log.warning("rollout_revert_label_left", rollout_id=rollout.id, reason=exc.message)
            note = DecisionFacts("label_move_failed", (exc.message,), {}, facts.actor)
            return await self.move(moved, note) or moved
        return moved

    def _must_be(self, rollout: Rollout, states: frozenset[str], verb: str) -> None:
        if rollout.state not in states or not rollout.in_effect:
            raise Conflict(f"rollout {rollout.id} is {rollout.state}: it cannot be {verb}",
                           code="rollout_state", param="id")  # fmt: skip

    async def _by_person(self, rollout_id: str, verb: str, states: frozenset[str],
                         facts: DecisionFacts, **changes: Any) -> Rollout:  # fmt: skip
        rollout = await self.store.get(rollout_id)
        self._must_be(rollout, states, verb)
        moved = await self.move(rollout, facts, **changes)
        if moved is None:
            raise Conflict(f"rollout {rollout_id} changed meanwhile; try again",
                           code="rollout_conflict", param="id")  # fmt: skip
        return moved

    async def pause(self, rollout_id: str, *, actor: str) -> Rollout:
        """Stop deciding; the traffic stays where it is (abort sends it all to stable)."""
        rollout = await self.store.get(rollout_id)
        facts = DecisionFacts("pause", (), {"resume_to": rollout.state}, actor)
        return await self._by_person(rollout_id, "paused", frozenset({"shadow", "canary"}),
                                     facts, state="paused")  # fmt: skip

    async def resume(self, rollout_id: str, *, actor: str) -> Rollout:
        rollout = await self.store.get(rollout_id)
        self._must_be(rollout, frozenset({"paused"}), "resumed")
        back = (rollout.last_decision or {}).get("figures", {}).get("resume_to", "canary")
        facts = DecisionFacts("resume", (), {}, actor)
        return await self._by_person(rollout_id, "resumed", frozenset({"paused"}), facts,
                                     state=back)  # fmt: skip

    async def abort(self, rollout_id: str, *, actor: str, reason: str | None = None) -> Rollout:
        """All traffic back to the stable version, for good."""
        facts = DecisionFacts("abort", (reason,) if reason else (), {}, actor)
        states = ACTIVE_STATES | {"completed"}
        return await self._by_person(rollout_id, "aborted", states, facts, state="aborted",
                                     in_effect=False)  # fmt: skip

    async def approve(self, rollout_id: str, *, actor: str) -> Rollout:
        """The promotion a plan's ``human_approval`` held: out of shadow into the canary's
        first stage, or the next stage."""
        rollout = await self.store.get(rollout_id)
        self._must_be(rollout, frozenset({"awaiting_approval"}), "approved")
        facts = DecisionFacts("approve", (f"approved by {actor}",), {}, actor)
        if rollout.pending_step == "canary":
            await self.check_freeze(rollout)
            moved = await self.move(rollout, facts, state="canary", stage=0)
        else:
            moved = await self.promote(rollout, facts)
        if moved is None:
            raise Conflict(f"rollout {rollout_id} changed meanwhile; try again",
                           code="rollout_conflict", param="id")  # fmt: skip
        return moved

    # -- reading -------------------------------------------------------------------------

    async def get(self, rollout_id: str) -> Rollout:
        return await self.store.get(rollout_id)

    async def list(self, *, agent: str | None = None) -> list[Rollout]:
        return await self.store.recent(agent=agent)

    async def report(self, rollout_id: str) -> dict[str, Any]:
        """The rollout, its decisions, per stage and arm its requests, errors, tokens and
        cost, the current stage's decision as it stands, and the shadow verdict."""
        rollout = await self.store.get(rollout_id)
        policy = policy_of(rollout)
        current = None
        if rollout.state in ("canary", "awaiting_approval", "paused"):
            samples = await self.store.stage_samples(rollout.id, rollout.stage)
            d = canary_decision(samples.stable, samples.candidate, policy)
            current = {"action": d.action.value, "reasons": list(d.reasons),
                       "figures": d.figures}  # fmt: skip
        pairs, selves = await self.store.shadow_pairs(rollout.id)
        shadow = None
        if pairs or rollout.strategy == "shadow_then_canary":
            verdict = shadow_report(pairs, selves, self._settings.rollouts.shadow)
            shadow = {"verdict": verdict.verdict.value, "reasons": list(verdict.reasons),
                      "figures": verdict.figures}  # fmt: skip
        return {
            "rollout": self.to_json(rollout),
            "decisions": await self.store.decisions(rollout.id),
            "stages": await self.store.sample_totals(rollout.id),
            "current_stage": current,
            "shadow": shadow,
        }

    @staticmethod
    def to_json(rollout: Rollout) -> dict[str, Any]:
        return rollout.to_json()


def policy_of(rollout: Rollout) -> CanaryPolicy:
    """The canary policy a stored rollout is judged by (its plan's, as started)."""
    return CanaryPolicy.model_validate(rollout.plan["canary"])
