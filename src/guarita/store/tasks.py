"""Task rows: the durable half of every task queue backend.

Status moves queued → running → succeeded | failed (or back to queued for a retry). Every
move is a conditional UPDATE, so two workers cannot both claim a task or both finish it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from guarita.store.database import Database
from guarita.store.models import Task

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


@dataclass(slots=True, frozen=True)
class TaskInfo:
    id: str
    status: str
    agent: str
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    key_id: str | None
    request_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: Task) -> TaskInfo:
        return cls(
            row.id,
            row.status,
            row.agent,
            row.payload,
            row.result,
            row.error,
            row.attempts,
            row.key_id,
            row.request_id,
            row.created_at,
            row.started_at,
            row.finished_at,
        )


class TaskStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, *, agent: str, payload: dict[str, Any], key_id: str | None, request_id: str | None
    ) -> TaskInfo:
        now = datetime.now(UTC)
        row = Task(
            id="task_" + secrets.token_hex(12),
            status=QUEUED,
            agent=agent,
            payload=payload,
            attempts=0,
            key_id=key_id,
            request_id=request_id,
            created_at=now,
            updated_at=now,
        )
        async with self._db.sessions.begin() as session:
            session.add(row)
        return TaskInfo.of(row)

    async def get(self, task_id: str) -> TaskInfo | None:
        async with self._db.sessions() as session:
            row = await session.get(Task, task_id)
            return TaskInfo.of(row) if row is not None else None

    async def _move(self, task_id: str, *, from_status: str, **values: Any) -> bool:
        values["updated_at"] = datetime.now(UTC)
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(Task).where(Task.id == task_id, Task.status == from_status).values(**values)
            )
        return bool(getattr(result, "rowcount", 0))

    async def claim(self, task_id: str) -> TaskInfo | None:
        """Move a queued task to running for this worker; None if someone else has it."""
        now = datetime.now(UTC)
        claimed = await self._move(
            task_id, from_status=QUEUED, status=RUNNING, attempts=Task.attempts + 1, started_at=now
        )
        return await self.get(task_id) if claimed else None

    async def succeed(self, task_id: str, result: dict[str, Any]) -> bool:
        return await self._move(
            task_id,
            from_status=RUNNING,
            status=SUCCEEDED,
            result=result,
            error=None,
            finished_at=datetime.now(UTC),
        )

    async def fail(self, task_id: str, error: dict[str, Any], *, retry: bool) -> bool:
        if retry:
            return await self._move(task_id, from_status=RUNNING, status=QUEUED, error=error)
        return await self._move(
            task_id, from_status=RUNNING, status=FAILED, error=error, finished_at=datetime.now(UTC)
        )

    async def requeue_interrupted(self) -> int:
        """Put tasks left running by a stopped process back in the queue."""
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(Task)
                .where(Task.status == RUNNING)
                .values(status=QUEUED, updated_at=datetime.now(UTC))
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def queued_ids(self) -> list[str]:
        async with self._db.sessions() as session:
            rows = await session.scalars(
                select(Task.id).where(Task.status == QUEUED).order_by(Task.created_at)
            )
            return list(rows)
