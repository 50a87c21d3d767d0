"""The reasoning log's table, ``request_steps``: written in batches like request records
(spooled ``steps-*.jsonl``, never lost), read per request, purged by age.

A step's ``step_id`` is ``<record_id>-<index>``; inserts skip ids already stored, so a
batch written twice is stored once. Rows arrive already PII-masked and cut to size
(:mod:`guarita.pipeline.steps`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, Table, delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from guarita.store.batch_writer import BatchWriter
from guarita.store.database import Database
from guarita.store.models import RequestRow, RequestStepRow

_STEPS: Table = RequestStepRow.__table__  # type: ignore[assignment]
_REQUESTS: Table = RequestRow.__table__  # type: ignore[assignment]
STEP_FIELDS = ("step_index", "kind", "name", "call_id", "content", "truncated", "created_at")


class StepWriter(BatchWriter):
    """Steps (dicts of ``request_steps`` columns) into their table."""

    kind = "steps"
    item = "step"
    id_field = "step_id"

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, **options)
        backend = db.engine.dialect.name
        self._insert: Insert
        if backend == "postgresql":
            self._insert = pg_insert(_STEPS).on_conflict_do_nothing(index_elements=["step_id"])
        elif backend == "sqlite":
            self._insert = sqlite_insert(_STEPS).on_conflict_do_nothing(index_elements=["step_id"])
        else:
            self._insert = insert(_STEPS)

    async def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:  # a spooled row comes back with its time as text
            if isinstance(row.get("created_at"), str):
                row["created_at"] = datetime.fromisoformat(row["created_at"])
        async with self._db.engine.begin() as conn:
            await conn.execute(self._insert, rows)


async def request_with_steps(db: Database, request_id: str) -> list[dict[str, Any]]:
    """The records of ``request_id`` (oldest first), each with its steps in order."""
    async with db.engine.connect() as conn:
        records = (
            (
                await conn.execute(
                    select(_REQUESTS)
                    .where(_REQUESTS.c.request_id == request_id)
                    .order_by(_REQUESTS.c.created_at, _REQUESTS.c.id)
                )
            )
            .mappings()
            .all()
        )
        ids = [r["record_id"] for r in records if r["record_id"]]
        steps = (
            (
                await conn.execute(
                    select(_STEPS)
                    .where(_STEPS.c.record_id.in_(ids))
                    .order_by(_STEPS.c.record_id, _STEPS.c.step_index)
                )
            )
            .mappings()
            .all()
            if ids
            else []
        )
    by_record: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        by_record.setdefault(step["record_id"], []).append(_utc({k: step[k] for k in STEP_FIELDS}))
    out = []
    for record in records:
        row = _utc({k: v for k, v in record.items() if k != "id"})
        row["steps"] = by_record.get(row["record_id"] or "", [])
        out.append(row)
    return out


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite hands times back without their zone; they were written in UTC."""
    created = row.get("created_at")
    if isinstance(created, datetime) and created.tzinfo is None:
        row["created_at"] = created.replace(tzinfo=UTC)
    return row


async def purge_steps(db: Database, before: datetime) -> int:
    """Delete the steps made before ``before``: one statement, safe to run anywhere twice."""
    async with db.engine.begin() as conn:
        result = await conn.execute(delete(_STEPS).where(_STEPS.c.created_at < before))
    return int(result.rowcount or 0)
