"""Files and batches of the Batch API, and each batch line's outcome.

A batch moves validating → in_progress → finalizing → completed, or to cancelling →
cancelled, expired, or failed. A line's outcome is written once: the primary key
(batch, line) refuses a second, and the batch's counters move in the same transaction,
so ``request_counts`` are exact however often a killed worker's batch is run again. The
final move writes the output and error files and the batch's status in one transaction.

Moves that read then write (cancel, finish) first *touch* the row with an UPDATE: that
takes PostgreSQL's row lock and SQLite's write lock before the read, so two processes
cannot both decide from the same old status.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from guarita.store.database import Database
from guarita.store.models import BatchJob, BatchResult, StoredFile

VALIDATING, IN_PROGRESS, FINALIZING = "validating", "in_progress", "finalizing"
COMPLETED, FAILED, EXPIRED = "completed", "failed", "expired"
CANCELLING, CANCELLED = "cancelling", "cancelled"
FINAL = frozenset({COMPLETED, FAILED, EXPIRED, CANCELLED})
CANCELLABLE = frozenset({VALIDATING, IN_PROGRESS})


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime | None) -> datetime | None:
    """Times are stored in UTC; SQLite hands them back without their zone."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def derived_file_id(batch_id: str, kind: str) -> str:
    """A batch's output or error file id: fixed by the batch, so that finishing it twice
    (two workers, a crash between) cannot store two files."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class FileInfo:
    id: str
    key_id: str | None
    filename: str
    purpose: str
    size: int
    lines: int
    created_at: datetime

    @classmethod
    def of(cls, row: StoredFile) -> FileInfo:
        created = _utc(row.created_at)
        assert created is not None
        return cls(row.id, row.key_id, row.filename, row.purpose, row.size, row.lines, created)


@dataclass(frozen=True, slots=True)
class BatchInfo:
    id: str
    key_id: str | None
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    task_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    errors: dict[str, Any] | None
    metadata: dict[str, Any] | None
    total: int
    completed: int
    failed: int
    request_id: str | None
    times: dict[str, datetime | None]
    """``created``, ``expires``, ``in_progress``, ... : each ``<name>_at`` of the batch."""

    @property
    def expires_at(self) -> datetime:
        moment = self.times["expires"]
        assert moment is not None
        return moment

    @classmethod
    def of(cls, row: BatchJob) -> BatchInfo:
        times = {name: _utc(getattr(row, f"{name}_at")) for name in MOMENTS}
        return cls(
            row.id,
            row.key_id,
            row.endpoint,
            row.input_file_id,
            row.completion_window,
            row.status,
            row.task_id,
            row.output_file_id,
            row.error_file_id,
            row.errors,
            row.metadata_,
            row.total,
            row.completed,
            row.failed,
            row.request_id,
            times,
        )


MOMENTS = (
    "created",
    "expires",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What one batch line came to: an answer (``succeeded``) or an error, with the HTTP
    status the route would have answered, if it got that far."""

    succeeded: bool
    status_code: int | None
    request_id: str | None
    body: dict[str, Any] | None
    """The answer, or the error body the route would have sent."""
    error: dict[str, Any] | None = None
    """For a failed line: ``{"code", "message"}``."""


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    line: int
    id: str
    custom_id: str
    outcome: LineOutcome


def _page(rows: Sequence[Any], limit: int) -> tuple[list[Any], bool]:
    return list(rows[:limit]), len(rows) > limit


class FileStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, *, key_id: str | None, filename: str, purpose: str, content: bytes, lines: int
    ) -> FileInfo:
        row = StoredFile(
            id="file-" + secrets.token_hex(12),
            key_id=key_id,
            filename=filename,
            purpose=purpose,
            size=len(content),
            lines=lines,
            created_at=_now(),
            content=content,
        )
        async with self._db.sessions.begin() as session:
            session.add(row)
        return FileInfo.of(row)

    async def get(self, file_id: str) -> FileInfo | None:
        async with self._db.sessions() as session:
            row = await session.get(StoredFile, file_id, options=[defer(StoredFile.content)])
            return FileInfo.of(row) if row is not None else None

    async def content(self, file_id: str) -> bytes | None:
        async with self._db.sessions() as session:
            content: bytes | None = await session.scalar(
                select(StoredFile.content).where(StoredFile.id == file_id)
            )
            return content

    async def page(
        self,
        *,
        key_id: str | None,
        purpose: str | None,
        after: str | None,
        limit: int,
        newest_first: bool = True,
    ) -> tuple[list[FileInfo], bool]:
        """A page of the key's files and whether more follow; ``after`` is the last file
        id of the previous page."""
        owner = StoredFile.key_id.is_(None) if key_id is None else StoredFile.key_id == key_id
        query = select(StoredFile).options(defer(StoredFile.content)).where(owner)
        if purpose is not None:
            query = query.where(StoredFile.purpose == purpose)
        order = (StoredFile.created_at, StoredFile.id)
        async with self._db.sessions() as session:
            if after is not None:
                mark = await session.get(StoredFile, after, options=[defer(StoredFile.content)])
                if mark is None:
                    return [], False
                cursor, edge = tuple_(*order), tuple_(mark.created_at, mark.id)
                query = query.where(cursor < edge if newest_first else cursor > edge)
            keys = [c.desc() if newest_first else c.asc() for c in order]
            rows = (await session.scalars(query.order_by(*keys).limit(limit + 1))).all()
            page, more = _page(rows, limit)
            return [FileInfo.of(row) for row in page], more

    async def delete(self, file_id: str) -> bool:
        async with self._db.sessions.begin() as session:
            result = await session.execute(delete(StoredFile).where(StoredFile.id == file_id))
        return bool(getattr(result, "rowcount", 0))


class BatchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        *,
        key_id: str | None,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        window_s: float,
        total: int,
        metadata: dict[str, Any] | None,
        request_id: str | None,
    ) -> BatchInfo:
        now = _now()
        row = BatchJob(
            id="batch_" + secrets.token_hex(12),
            key_id=key_id,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status=VALIDATING,
            metadata_=metadata,
            total=total,
            completed=0,
            failed=0,
            request_id=request_id,
            created_at=now,
            expires_at=now + timedelta(seconds=window_s),
        )
        async with self._db.sessions.begin() as session:
            session.add(row)
        return BatchInfo.of(row)

    async def get(self, batch_id: str) -> BatchInfo | None:
        async with self._db.sessions() as session:
            row = await session.get(BatchJob, batch_id)
            return BatchInfo.of(row) if row is not None else None

    async def status(self, batch_id: str) -> str | None:
        async with self._db.sessions() as session:
            status: str | None = await session.scalar(
                select(BatchJob.status).where(BatchJob.id == batch_id)
            )
            return status

    async def page(
        self, *, key_id: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchInfo], bool]:
        """A page of the key's batches, newest first, and whether more follow."""
        owner = BatchJob.key_id.is_(None) if key_id is None else BatchJob.key_id == key_id
        query = select(BatchJob).where(owner)
        async with self._db.sessions() as session:
            if after is not None:
                mark = await session.get(BatchJob, after)
                if mark is None:
                    return [], False
                edge = tuple_(mark.created_at, mark.id)
                query = query.where(tuple_(BatchJob.created_at, BatchJob.id) < edge)
            order = (BatchJob.created_at.desc(), BatchJob.id.desc())
            rows = (await session.scalars(query.order_by(*order).limit(limit + 1))).all()
            page, more = _page(rows, limit)
            return [BatchInfo.of(row) for row in page], more

    async def set_task(self, batch_id: str, task_id: str) -> None:
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(BatchJob).where(BatchJob.id == batch_id).values(task_id=task_id)
            )

    async def start(self, batch_id: str) -> None:
        """validating → in_progress, once (a rerun leaves the first start's time)."""
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(BatchJob)
                .where(BatchJob.id == batch_id, BatchJob.status == VALIDATING)
                .values(status=IN_PROGRESS, in_progress_at=_now())
            )

    async def cancel(self, batch_id: str) -> BatchInfo | None:
        """validating or in_progress → cancelling; any other status is left as it is."""
        async with self._db.sessions.begin() as session:
            row = await _locked(session, batch_id)
            if row is not None and row.status in CANCELLABLE:
                row.status, row.cancelling_at = CANCELLING, _now()
            return BatchInfo.of(row) if row is not None else None

    async def save(self, batch_id: str, line: int, custom_id: str, outcome: LineOutcome) -> bool:
        """Store a line's outcome and count it; False if the line already had one."""
        row = BatchResult(
            batch_id=batch_id,
            line=line,
            id="batch_req_" + secrets.token_hex(12),
            custom_id=custom_id,
            succeeded=outcome.succeeded,
            status_code=outcome.status_code,
            request_id=outcome.request_id,
            body=outcome.body,
            error=outcome.error,
            created_at=_now(),
        )
        counter = BatchJob.completed if outcome.succeeded else BatchJob.failed
        try:
            async with self._db.sessions.begin() as session:
                session.add(row)
                await session.flush()
                await session.execute(
                    update(BatchJob)
                    .where(BatchJob.id == batch_id)
                    .values({counter.key: counter + 1})
                )
        except IntegrityError:
            return False  # another run of the batch stored this line first
        return True

    async def done_lines(self, batch_id: str) -> set[int]:
        async with self._db.sessions() as session:
            rows = await session.scalars(
                select(BatchResult.line).where(BatchResult.batch_id == batch_id)
            )
            return set(rows)

    async def outcomes(self, batch_id: str) -> list[StoredOutcome]:
        """Every stored outcome of the batch, in input order."""
        async with self._db.sessions() as session:
            rows = await session.scalars(
                select(BatchResult)
                .where(BatchResult.batch_id == batch_id)
                .order_by(BatchResult.line)
            )
            return [
                StoredOutcome(
                    r.line,
                    r.id,
                    r.custom_id,
                    LineOutcome(r.succeeded, r.status_code, r.request_id, r.body, r.error),
                )
                for r in rows
            ]

    async def finalizing(self, batch_id: str) -> None:
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(BatchJob)
                .where(BatchJob.id == batch_id, BatchJob.status == IN_PROGRESS)
                .values(status=FINALIZING, finalizing_at=_now())
            )

    async def finish(
        self,
        batch_id: str,
        status: str,
        *,
        output: bytes | None,
        errors_file: bytes | None,
        extra_failed: int = 0,
        errors: dict[str, Any] | None = None,
    ) -> tuple[BatchInfo, bool] | None:
        """End the batch in ``status`` (completed, expired or failed; cancelled instead if
        it is being cancelled) with its output and error files, all in one transaction.
        Returns the batch as it ended and True, or as it was and False if it had already
        ended; None if there is no such batch."""
        async with self._db.sessions.begin() as session:
            row = await _locked(session, batch_id)
            if row is None:
                return None
            if row.status in FINAL:
                return BatchInfo.of(row), False
            if row.status == CANCELLING:
                status = CANCELLED
            now = _now()
            for kind, content in (("output", output), ("error", errors_file)):
                if content is None:
                    continue
                file_id = derived_file_id(batch_id, kind)
                session.add(
                    StoredFile(
                        id=file_id,
                        key_id=row.key_id,
                        filename=f"{batch_id}_{kind}.jsonl",
                        purpose="batch_output",
                        size=len(content),
                        lines=content.count(b"\n"),
                        created_at=now,
                        content=content,
                    )
                )
                setattr(row, f"{kind}_file_id", file_id)
            row.status = status
            setattr(row, f"{status}_at", now)
            row.failed += extra_failed
            if errors is not None:
                row.errors = errors
            return BatchInfo.of(row), True


async def _locked(session: AsyncSession, batch_id: str) -> BatchJob | None:
    """The batch's row, write-locked for the rest of the transaction (see the module)."""
    await session.execute(
        update(BatchJob).where(BatchJob.id == batch_id).values(status=BatchJob.status)
    )
    return await session.get(BatchJob, batch_id, populate_existing=True)
