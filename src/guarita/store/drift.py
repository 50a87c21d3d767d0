"""Drift's tables: sampled embeddings (written in batches), each agent's baseline window and
the evaluations of the current window against it (docs/observability.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select

from guarita.store.database import Database
from guarita.store.models import DriftBaseline, DriftResult, DriftSample


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """Samples of one agent and kind, oldest first: their vectors (float32 bytes each),
    and the first and last ``created_at``."""

    vectors: list[bytes]
    starts_at: datetime | None
    ends_at: datetime | None

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True, slots=True)
class Baseline:
    agent: str
    kind: str
    starts_at: datetime
    ends_at: datetime
    set_at: datetime
    set_by: str

    def to_json(self) -> dict[str, str]:
        return {"agent": self.agent, "kind": self.kind, "starts_at": self.starts_at.isoformat(),
                "ends_at": self.ends_at.isoformat(), "set_at": self.set_at.isoformat(),
                "set_by": self.set_by}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Evaluation:
    agent: str
    kind: str
    created_at: datetime
    level: str
    score: float
    report: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "kind": self.kind, "created_at": self.created_at.isoformat(),
                "level": self.level, "score": self.score, "report": self.report}  # fmt: skip


class DriftStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db

    async def add_samples(self, rows: Sequence[dict[str, Any]]) -> None:
        """One multi-row insert (columns of ``drift_samples``)."""
        if not rows:
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(DriftSample), list(rows))

    async def window(
        self,
        agent: str,
        kind: str,
        *,
        since: datetime | None = None,
        after: datetime | None = None,
        until: datetime | None = None,
        limit: int,
        newest: bool = False,
    ) -> Window:
        """Up to ``limit`` samples created from ``since`` (or after ``after``) up to
        ``until``: the oldest ones, or with ``newest`` the newest ones (oldest first either
        way)."""
        t = DriftSample
        query = select(t.vector, t.created_at).where(t.agent == agent, t.kind == kind)
        if since is not None:
            query = query.where(t.created_at >= since)
        if after is not None:
            query = query.where(t.created_at > after)
        if until is not None:
            query = query.where(t.created_at <= until)
        order = (t.created_at.desc(), t.id.desc()) if newest else (t.created_at, t.id)
        async with self._db.sessions() as session:
            rows = list((await session.execute(query.order_by(*order).limit(limit))).all())
        if newest:
            rows.reverse()
        if not rows:
            return Window([], None, None)
        return Window([r.vector for r in rows], _utc(rows[0].created_at),
                      _utc(rows[-1].created_at))  # fmt: skip

    async def count(self, agent: str, kind: str, *, after: datetime | None = None) -> int:
        t = DriftSample
        query = select(func.count()).where(t.agent == agent, t.kind == kind)
        if after is not None:
            query = query.where(t.created_at > after)
        async with self._db.sessions() as session:
            return int((await session.execute(query)).scalar_one())

    async def baseline(self, agent: str, kind: str) -> Baseline | None:
        async with self._db.sessions() as session:
            row = await session.get(DriftBaseline, (agent, kind))
        if row is None:
            return None
        return Baseline(row.agent, row.kind, _utc(row.starts_at), _utc(row.ends_at),
                        _utc(row.set_at), row.set_by)  # fmt: skip

    async def baselines(self) -> list[Baseline]:
        async with self._db.sessions() as session:
            rows = (await session.execute(select(DriftBaseline))).scalars().all()
        return [Baseline(r.agent, r.kind, _utc(r.starts_at), _utc(r.ends_at), _utc(r.set_at),
                         r.set_by) for r in rows]  # fmt: skip

    async def set_baseline(
        self, agent: str, kind: str, starts_at: datetime, ends_at: datetime, set_by: str
    ) -> Baseline:
        """Replace the agent's baseline (for one kind); later evaluations compare with it."""
        now = datetime.now(UTC)
        async with self._db.sessions() as session, session.begin():
            await session.execute(
                delete(DriftBaseline).where(
                    DriftBaseline.agent == agent, DriftBaseline.kind == kind
                )
            )
            session.add(DriftBaseline(agent=agent, kind=kind, starts_at=starts_at,
                                      ends_at=ends_at, set_at=now, set_by=set_by))  # fmt: skip
        return Baseline(agent, kind, starts_at, ends_at, now, set_by)

    async def add_result(self, evaluation: Evaluation) -> None:
        async with self._db.sessions() as session, session.begin():
            session.add(DriftResult(agent=evaluation.agent, kind=evaluation.kind,
                                    created_at=evaluation.created_at, level=evaluation.level,
                                    score=evaluation.score, report=evaluation.report))  # fmt: skip

    async def latest(self, agent: str | None = None) -> list[Evaluation]:
        """The newest evaluation of each agent and kind (of one agent, with ``agent``)."""
        t = DriftResult
        newest = select(t.agent, t.kind, func.max(t.id).label("id")).group_by(t.agent, t.kind)
        if agent is not None:
            newest = newest.where(t.agent == agent)
        ids = newest.subquery()
        query = select(t).join(ids, t.id == ids.c.id).order_by(t.agent, t.kind)
        async with self._db.sessions() as session:
            rows = (await session.execute(query)).scalars().all()
        return [Evaluation(r.agent, r.kind, _utc(r.created_at), r.level, r.score, r.report)
                for r in rows]  # fmt: skip

    async def agents(self) -> list[str]:
        """Agents with samples."""
        async with self._db.sessions() as session:
            rows = await session.execute(select(DriftSample.agent).distinct())
        return sorted(r[0] for r in rows)
