"""Task rows: the durable half of every task queue backend.

Status moves queued → running → succeeded | failed (or back to queued for a retry). A
worker *claims* a task with a fresh token and a lease it renews while it works; every
later move is conditional on that token, so a task is never finished twice, and a task
whose worker died (lease expired) can be claimed again by another worker.

``attempts`` counts attempts that ended (succeeded or failed), which is what
``max_attempts`` bounds; ``deliveries`` counts claims, so a worker killed mid-attempt
costs the task no attempt, and a task that kills its workers is still stopped.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from guarita.store.database import Database
from guarita.store.models import Task

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINAL = frozenset({SUCCEEDED, FAILED})


@dataclass(slots=True, frozen=True)
class TaskInfo:
    id: str
    status: str
    agent: str
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    """Attempts that ended; the one running now, if any, is ``attempts + 1``."""
    key_id: str | None
    request_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    claim_token: str | None = None
    deliveries: int = 0
    kind: str = "agent"
    """What runs it: ``agent`` (an agent chat) or ``batch`` (``batches/runner.py``)."""

    @property
    def attempt(self) -> int:
        """The number of the attempt a claimed task is running."""
        return self.attempts + 1

    @classmethod
    def of(cls, row: Task) -> TaskInfo:
        return cls(
            row.id, row.status, row.agent, row.payload, row.result, row.error, row.attempts,
            row.key_id, row.request_id, _utc(row.created_at), _utc(row.started_at),
            _utc(row.finished_at), row.claim_token, row.deliveries, row.kind,
        )  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: Any) -> Any:
    """Times are stored in UTC; SQLite hands them back without their zone."""
    if isinstance(moment, datetime) and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


class TaskStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, *, agent: str, payload: dict[str, Any], key_id: str | None, request_id: str | None,
        kind: str = "agent",
    ) -> TaskInfo:  # fmt: skip
        now = _now()
        row = Task(
            id="task_" + secrets.token_hex(12), status=QUEUED, agent=agent, payload=payload,
            attempts=0, deliveries=0, key_id=key_id, request_id=request_id, created_at=now,
            updated_at=now, kind=kind,
        )  # fmt: skip
        async with self._db.sessions.begin() as session:
            session.add(row)
        return TaskInfo.of(row)

    async def get(self, task_id: str) -> TaskInfo | None:
        async with self._db.sessions() as session:
            row = await session.get(Task, task_id)
            return TaskInfo.of(row) if row is not None else None

    async def _update(self, task_id: str, *where: Any, **values: Any) -> bool:
        values["updated_at"] = _now()
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(Task).where(Task.id == task_id, *where).values(**values)
            )
        return bool(getattr(result, "rowcount", 0))

    async def claim(self, task_id: str, *, lease_s: float) -> TaskInfo | None:
        """Take a queued task, or a running one whose lease ran out; None if not claimable."""
        now = _now()
        token = secrets.token_hex(8)
        claimable = or_(Task.status == QUEUED, and_(Task.status == RUNNING, Task.lease_until < now))
        claimed = await self._update(
            task_id, claimable, status=RUNNING, deliveries=Task.deliveries + 1, started_at=now,
            claim_token=token, lease_until=now + timedelta(seconds=lease_s),
        )  # fmt: skip
        return await self.get(task_id) if claimed else None

    async def renew(self, task: TaskInfo, *, lease_s: float) -> bool:
        return await self._update(
            task.id, Task.status == RUNNING, Task.claim_token == task.claim_token,
            lease_until=_now() + timedelta(seconds=lease_s),
        )  # fmt: skip

    async def succeed(self, task: TaskInfo, result: dict[str, Any]) -> bool:
        """Finish a claimed task; False if the claim was lost (another worker took over)."""
        return await self._update(
            task.id, Task.status == RUNNING, Task.claim_token == task.claim_token,
            status=SUCCEEDED, result=result, error=None, finished_at=_now(), lease_until=None,
            attempts=Task.attempts + 1,
        )  # fmt: skip

    async def fail(
        self, task: TaskInfo, error: dict[str, Any], *, retry: bool, counted: bool = True
    ) -> bool:
        """End a claimed attempt as failed: queued again for a retry, or failed for good.
        ``counted=False`` for an attempt that never ran (the task gave up before it)."""
        owned = (Task.status == RUNNING, Task.claim_token == task.claim_token)
        ended = {"attempts": Task.attempts + 1} if counted else {}
        if retry:
            return await self._update(
                task.id, *owned, status=QUEUED, error=error, lease_until=None, **ended
            )
        return await self._update(
            task.id, *owned, status=FAILED, error=error, finished_at=_now(), lease_until=None,
            **ended,
        )  # fmt: skip

    async def queued_ids(self) -> list[str]:
        async with self._db.sessions() as session:
            rows = await session.scalars(
                select(Task.id).where(Task.status == QUEUED).order_by(Task.created_at)
            )
            return list(rows)

    async def stranded_ids(self, *, queued_for_s: float) -> list[str]:
        """Tasks that may have lost their queue message: running with an expired lease,
        or queued for longer than ``queued_for_s``. Re-sending them is safe (claims are
        conditional)."""
        now = _now()
        async with self._db.sessions() as session:
            rows = await session.scalars(
                select(Task.id).where(
                    or_(
                        and_(Task.status == RUNNING, Task.lease_until < now),
                        and_(
                            Task.status == QUEUED,
                            Task.updated_at < now - timedelta(seconds=queued_for_s),
                        ),
                    )
                )
            )
            return list(rows)
