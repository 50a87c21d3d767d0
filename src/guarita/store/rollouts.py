"""The rollouts' tables: rollouts and their decisions (read and moved here), and the
samples and shadow pairs (written in batches by :class:`SampleWriter`, off the hot path).

A rollout's state moves by compare-and-swap on its ``version``: :meth:`RolloutStore.transition`
names the version it read, so of several processes deciding at once one moves it (and
writes the decision row in the same transaction) and the others find it gone. One rollout
per agent is in effect at a time: ``active_agent`` is unique, so of two concurrent starts
for one agent the second is refused (409 ``rollout_active``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import Table, case, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from guarita.errors import Conflict, NotFound
from guarita.ops.decide import Sample, ShadowPair
from guarita.store.batch_writer import BatchWriter
from guarita.store.database import Database
from guarita.store.models import RolloutDecisionRow, RolloutRow, RolloutSampleRow, ShadowPairRow

ACTIVE_STATES = frozenset({"shadow", "canary", "awaiting_approval", "paused"})
FINAL_STATES = frozenset({"completed", "rolled_back", "aborted"})


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rollout:
    id: str
    agent: str
    change_type: str
    strategy: str
    candidate_prompt: str | None
    candidate_model: str | None
    stable_prompt: str | None
    stable_model: str
    plan: dict[str, Any]
    stage: int
    state: str
    stage_started_at: datetime
    version: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    last_decision: dict[str, Any] | None
    in_effect: bool
    """Whether it routes traffic (``active_agent`` is set)."""

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(self.plan["stages"])

    @property
    def percent(self) -> int:
        """Of the agent's traffic on the candidate now (a completed one has it all: the
        agent's label points at it, or the rollout routes to its model)."""
        if self.state == "completed":
            return 100
        if not self.in_effect or self.state == "shadow" or self._figure("resume_to") == "shadow":
            return 0
        if self.pending_step == "canary":
            return 0
        return self.stages[min(self.stage, len(self.stages) - 1)]

    @property
    def monitoring_until(self) -> datetime | None:
        """Until when a completed rollout is watched (the plan's ``monitoring_window_s``
        from when it reached 100%): urgent drift of the agent's answers or its error budget
        used up meanwhile rolls it back. None: not completed, or no window."""
        window = float(self.plan.get("monitoring_window_s") or 0)
        if self.state != "completed" or window <= 0:
            return None
        return self.stage_started_at + timedelta(seconds=window)

    def monitored(self, now: datetime | None = None) -> bool:
        until = self.monitoring_until
        return until is not None and (now or datetime.now(UTC)) < until

    @property
    def pending_step(self) -> str | None:
        """What an ``awaiting_approval`` rollout waits for: ``canary`` (leave shadow) or
        ``promote`` (the next stage)."""
        pending = self._figure("pending") if self.state == "awaiting_approval" else None
        return pending if isinstance(pending, str) else None

    def _figure(self, name: str) -> Any:
        """A figure of the last decision (which says where a pause or a wait goes on)."""
        if self.state not in ("paused", "awaiting_approval") or not self.last_decision:
            return None
        return self.last_decision.get("figures", {}).get(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "agent": self.agent, "change_type": self.change_type,
            "strategy": self.strategy, "candidate_prompt": self.candidate_prompt,
            "candidate_model": self.candidate_model, "stable_prompt": self.stable_prompt,
            "stable_model": self.stable_model, "stages": list(self.stages), "stage": self.stage,
            "percent": self.percent, "state": self.state, "in_effect": self.in_effect,
            "stage_started_at": self.stage_started_at.isoformat(), "version": self.version,
            "created_by": self.created_by, "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(), "last_decision": self.last_decision,
            "plan": self.plan,
            "monitoring_until": until.isoformat() if (until := self.monitoring_until) else None,
        }  # fmt: skip


def _rollout(row: RolloutRow) -> Rollout:
    return Rollout(
        id=row.id, agent=row.agent, change_type=row.change_type, strategy=row.strategy,
        candidate_prompt=row.candidate_prompt, candidate_model=row.candidate_model,
        stable_prompt=row.stable_prompt, stable_model=row.stable_model, plan=dict(row.plan),
        stage=row.stage, state=row.state, stage_started_at=_utc(row.stage_started_at),
        version=row.version, created_by=row.created_by, created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at), last_decision=row.last_decision,
        in_effect=row.active_agent is not None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    """What a decision row says: the action taken, why, on which figures, by whom."""

    action: str
    reasons: Sequence[str] = ()
    figures: dict[str, Any] = field(default_factory=dict)
    actor: str = "service"

    def to_json(self, stage: int, state: str, at: datetime) -> dict[str, Any]:
        return {"at": at.isoformat(), "stage": stage, "action": self.action, "state": state,
                "reasons": list(self.reasons), "figures": self.figures,
                "actor": self.actor}  # fmt: skip


def not_found(rollout_id: str) -> NotFound:
    return NotFound(f"rollout {rollout_id!r} does not exist", code="rollout_not_found")


@dataclass(slots=True)
class StageSamples:
    stable: list[Sample]
    candidate: list[Sample]


class RolloutStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, rollout: Rollout, decision: DecisionFacts) -> Rollout:
        """Insert ``rollout`` (in effect) and its first decision; 409 ``rollout_active``
        when another rollout of the agent is in effect."""
        row = RolloutRow(
            id=rollout.id, agent=rollout.agent, active_agent=rollout.agent,
            change_type=rollout.change_type, strategy=rollout.strategy,
            candidate_prompt=rollout.candidate_prompt, candidate_model=rollout.candidate_model,
            stable_prompt=rollout.stable_prompt, stable_model=rollout.stable_model,
            plan=rollout.plan, stage=rollout.stage, state=rollout.state,
            stage_started_at=rollout.stage_started_at, version=1,
            created_by=rollout.created_by, created_at=rollout.created_at,
            updated_at=rollout.updated_at, last_decision=None,
        )  # fmt: skip
        try:
            async with self._db.sessions.begin() as session:
                session.add(row)
                await session.flush()
                session.add(_decision_row(rollout.id, rollout.stage, rollout.state, decision,
                                          rollout.created_at))  # fmt: skip
        except IntegrityError:
            raise active_conflict(rollout.agent) from None
        return _rollout(row)

    async def get(self, rollout_id: str) -> Rollout:
        async with self._db.sessions() as session:
            row = await session.get(RolloutRow, rollout_id)
        if row is None:
            raise not_found(rollout_id)
        return _rollout(row)

    async def recent(self, *, agent: str | None = None, limit: int = 100) -> list[Rollout]:
        """Newest first."""
        query = select(RolloutRow).order_by(RolloutRow.created_at.desc()).limit(limit)
        if agent is not None:
            query = query.where(RolloutRow.agent == agent)
        async with self._db.sessions() as session:
            return [_rollout(row) for row in await session.scalars(query)]

    async def in_effect(self) -> list[Rollout]:
        """Every rollout that routes traffic now (at most one per agent)."""
        query = select(RolloutRow).where(RolloutRow.active_agent.is_not(None))
        async with self._db.sessions() as session:
            return [_rollout(row) for row in await session.scalars(query)]

    async def transition(
        self, rollout: Rollout, decision: DecisionFacts | None, *, state: str | None = None,
        stage: int | None = None, in_effect: bool | None = None,
        last_decision: dict[str, Any] | None = None,
    ) -> Rollout | None:  # fmt: skip
        """Move ``rollout`` from the version it was read at; None when another process
        moved it first. ``decision``: the row written with the move (None: a note only)."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"version": rollout.version + 1, "updated_at": now}
        if state is not None:
            values["state"] = state
        if stage is not None and stage != rollout.stage:
            values.update(stage=stage, stage_started_at=now)
        if in_effect is not None:
            values["active_agent"] = rollout.agent if in_effect else None
        new_state = values.get("state", rollout.state)
        new_stage = values.get("stage", rollout.stage)
        if decision is not None:
            last_decision = decision.to_json(new_stage, new_state, now)
        if last_decision is not None:
            values["last_decision"] = last_decision
        try:
            async with self._db.sessions.begin() as session:
                result = await session.execute(
                    update(RolloutRow)
                    .where(RolloutRow.id == rollout.id, RolloutRow.version == rollout.version)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) != 1:
                    return None
                if decision is not None:
                    session.add(_decision_row(rollout.id, new_stage, new_state, decision, now))
        except IntegrityError:  # put back in effect while another rollout of the agent is
            raise active_conflict(rollout.agent) from None
        return await self.get(rollout.id)

    async def decisions(self, rollout_id: str) -> list[dict[str, Any]]:
        query = (
            select(RolloutDecisionRow)
            .where(RolloutDecisionRow.rollout_id == rollout_id)
            .order_by(RolloutDecisionRow.id)
        )
        async with self._db.sessions() as session:
            return [
                DecisionFacts(r.action, r.reasons, r.figures, r.actor).to_json(
                    r.stage, r.state, _utc(r.at)
                )
                for r in await session.scalars(query)
            ]

    async def stage_samples(self, rollout_id: str, stage: int) -> StageSamples:
        """The stage's samples of each arm, in arrival order."""
        query = (
            select(RolloutSampleRow)
            .where(RolloutSampleRow.rollout_id == rollout_id, RolloutSampleRow.stage == stage)
            .order_by(RolloutSampleRow.id)
        )
        out = StageSamples([], [])
        async with self._db.sessions() as session:
            for r in await session.scalars(query):
                sample = Sample(ok=r.ok, latency_ms=r.latency_ms, quality=r.quality,
                                consistency=r.consistency)  # fmt: skip
                (out.candidate if r.variant == "canary" else out.stable).append(sample)
        return out

    async def sample_totals(self, rollout_id: str) -> list[dict[str, Any]]:
        """Per stage and arm: requests, errors, tokens and cost."""
        s = RolloutSampleRow
        query = (
            select(s.stage, s.variant, func.count(), func.sum(case((s.ok.is_(False), 1), else_=0)),
                   func.sum(s.input_tokens + s.output_tokens), func.sum(s.cost_usd))
            .where(s.rollout_id == rollout_id)
            .group_by(s.stage, s.variant)
            .order_by(s.stage, s.variant)
        )  # fmt: skip
        async with self._db.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            {"stage": stage, "variant": variant, "requests": int(n), "errors": int(errors or 0),
             "tokens": int(tokens or 0), "cost_usd": round(float(cost or 0.0), 8)}
            for stage, variant, n, errors, tokens, cost in rows
        ]  # fmt: skip

    async def shadow_pairs(self, rollout_id: str) -> tuple[list[ShadowPair], list[float]]:
        """The rollout's mirrored pairs and the stable version's self-similarity values."""
        query = (
            select(ShadowPairRow)
            .where(ShadowPairRow.rollout_id == rollout_id)
            .order_by(ShadowPairRow.id)
        )
        pairs, selves = [], []
        async with self._db.sessions() as session:
            for r in await session.scalars(query):
                pairs.append(ShadowPair(
                    live_ok=r.live_ok, candidate_ok=r.candidate_ok, similarity=r.similarity,
                    live_latency_ms=r.live_latency_ms,
                    candidate_latency_ms=r.candidate_latency_ms, live_tokens=r.live_tokens,
                    candidate_tokens=r.candidate_tokens,
                    candidate_cost_usd=r.candidate_cost_usd, live_quality=r.live_quality,
                    candidate_quality=r.candidate_quality,
                ))  # fmt: skip
                if r.self_similarity is not None:
                    selves.append(r.self_similarity)
        return pairs, selves


def _decision_row(
    rollout_id: str, stage: int, state: str, decision: DecisionFacts, at: datetime
) -> RolloutDecisionRow:
    return RolloutDecisionRow(
        rollout_id=rollout_id, at=at, stage=stage, action=decision.action, state=state,
        reasons=list(decision.reasons), figures=decision.figures, actor=decision.actor,
    )  # fmt: skip


def active_conflict(agent: str) -> Conflict:
    return Conflict(f"agent {agent!r} already has a rollout in effect (abort it first)",
                    code="rollout_active", param="agent")  # fmt: skip


class SampleWriter(BatchWriter):
    """Rollout samples (``rollout_samples``) or shadow pairs (``shadow_pairs``), each row
    carrying its own id so that a batch written twice is stored once."""

    kind: ClassVar[str] = "rollout-samples"
    item: ClassVar[str] = "rollout_sample"
    id_field: ClassVar[str] = "sample_id"
    table: ClassVar[Table] = RolloutSampleRow.__table__  # type: ignore[assignment]

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, **options)
        backend = db.engine.dialect.name
        if backend == "postgresql":
            self._insert: Any = pg_insert(self.table).on_conflict_do_nothing(
                index_elements=[self.id_field]
            )
        elif backend == "sqlite":
            self._insert = sqlite_insert(self.table).on_conflict_do_nothing(
                index_elements=[self.id_field]
            )
        else:
            self._insert = insert(self.table)

    async def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if isinstance(row.get("at"), str):
                row["at"] = datetime.fromisoformat(row["at"])
        async with self._db.engine.begin() as conn:
            await conn.execute(self._insert, rows)


class PairWriter(SampleWriter):
    kind = "shadow-pairs"
    item = "shadow_pair"
    id_field = "pair_id"
    table = ShadowPairRow.__table__  # type: ignore[assignment]
