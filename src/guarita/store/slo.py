"""The store's side of error budgets: SLO events counted from request records (one aggregate
query per agent and window, SQLite and PostgreSQL alike), and each budget's state, changed
by compare-and-swap so that a change is announced once whichever process sees it first.

The counting query is :meth:`guarita.ops.slo.EventRules.outcome` written in SQL; a test
keeps the two equal over records of every kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from guarita.ops.slo import Counts, EventRules, Objective
from guarita.store.database import Database
from guarita.store.models import RequestRow, SloState

_REQUESTS: Table = RequestRow.__table__  # type: ignore[assignment]
_STATES: Table = SloState.__table__  # type: ignore[assignment]


def _conditions(
    objective: Objective, rules: EventRules
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(is an event, is a good event) of ``objective``, as SQL over a request row."""
    c = _REQUESTS.c
    if objective.slo == "availability":
        served = c.status_code.not_in(sorted(rules.excluded_status_codes))
        good = and_(
            served, c.status_code < 500, c.status_code.not_in(sorted(rules.bad_status_codes))
        )
        return served, good
    value = c.quality if objective.slo == "quality" else c.consistency
    scored = and_(c.status == "success", value.is_not(None))
    return scored, and_(scored, value >= objective.threshold)


def _sum(condition: ColumnElement[bool], label: str) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0).label(label)


class SloCounts:
    """Good and total events per SLO of one agent in a time range, from ``requests``."""

    def __init__(self, db: Database, rules: EventRules) -> None:
        self._db = db
        self._rules = rules

    async def count(
        self, agent: str, objectives: Sequence[Objective], since: datetime, until: datetime
    ) -> dict[str, Counts]:
        """Events created in ``(since, until]`` (a window closed at its end, as Prometheus's
        range selectors are), per SLO name of ``objectives`` (all of ``agent``)."""
        columns = []
        for objective in objectives:
            counted, good = _conditions(objective, self._rules)
            columns += [
                _sum(counted, f"{objective.slo}_total"),
                _sum(good, f"{objective.slo}_good"),
            ]
        if not columns:
            return {}
        c = _REQUESTS.c
        query = select(*columns).where(
            c.agent == agent, c.created_at > since, c.created_at <= until
        )
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(query)).one()._mapping
        return {
            o.slo: Counts(good=int(row[f"{o.slo}_good"]), total=int(row[f"{o.slo}_total"]))
            for o in objectives
        }


@dataclass(frozen=True, slots=True)
class BudgetRecord:
    agent: str
    slo: str
    state: str
    consumed: float
    revision: int
    changed_at: datetime


class SloStates:
    """Each budget's last announced state; a change is a compare-and-swap on the state read,
    so of processes making the same change at once exactly one gets ``True``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        name = db.engine.dialect.name
        self._insert = pg_insert if name == "postgresql" else sqlite_insert

    async def all(self, agent: str | None = None) -> dict[tuple[str, str], BudgetRecord]:
        query = select(SloState)
        if agent is not None:
            query = query.where(SloState.agent == agent)
        async with self._db.sessions() as session:
            rows = (await session.execute(query)).scalars().all()
        return {
            (r.agent, r.slo): BudgetRecord(
                r.agent, r.slo, r.state, r.consumed, r.revision, r.changed_at
            )
            for r in rows
        }

    async def frozen(self, agent: str) -> list[BudgetRecord]:
        """The agent's exhausted budgets (a rollout's question: one indexed read)."""
        return [r for r in (await self.all(agent)).values() if r.state == "exhausted"]

    async def move(self, agent: str, slo: str, expected: str, new: str, consumed: float) -> bool:
        """Set the state to ``new`` if it is ``expected`` now (a budget never seen is ``ok``);
        ``True`` for the one caller whose change it was."""
        now = datetime.now(UTC)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                self._insert(_STATES)
                .values(agent=agent, slo=slo, state="ok", consumed=0.0, revision=0, changed_at=now)
                .on_conflict_do_nothing(index_elements=["agent", "slo"])
            )
            result = await conn.execute(
                update(SloState)
                .where(SloState.agent == agent, SloState.slo == slo, SloState.state == expected)
                .values(
                    state=new, consumed=consumed, revision=SloState.revision + 1, changed_at=now
                )
            )
        return bool(getattr(result, "rowcount", 0) == 1)


__all__ = ["BudgetRecord", "SloCounts", "SloStates"]
