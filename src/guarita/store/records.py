"""Request records, written in batches by a background task, off the request's hot path.

What it promises: an answered request's record is written once, and nothing stops the
writing of the others.

- Every record carries its own ``record_id``; inserts skip ids already stored, so a
  batch written twice (a retry after a lost commit, a spool replayed by two processes)
  is stored once. Flushes are serialised and take their batch out of the queue before
  writing, so concurrent flushes never write the same records.
- A record the store refuses (a value too long, a NOT NULL broken: the store's "data" or
  "integrity" errors) is isolated by writing the batch in halves, down to one record,
  and that one goes to a dead-letter file (``records.jsonl`` under ``dead_letter_dir``)
  with a metric and a log line that names it but holds none of its values. Any other
  failure (store unreachable, locked, missing table) keeps every record and retries.
- The queue in memory is bounded: past ``max_pending`` the newest records are spooled to
  JSON-lines files in ``spool_dir``, which the writer drains when it has caught up. On
  shutdown, what the store cannot take is spooled too. Spool files are replayed in the
  background, so a bad or unreadable spool never stops a start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import secrets
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog
from sqlalchemy import Insert, String, Table, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from guarita.store.database import Database
from guarita.store.models import RequestRow
from guarita.types import new_record_id

__all__ = ["RecordWriter", "new_record_id", "normalize", "refused_by_store"]

log = structlog.get_logger("guarita.records")

_TABLE: Table = RequestRow.__table__  # type: ignore[assignment]
_COLUMNS = [c for c in _TABLE.columns if c.name != "id"]


def _default(column: Any) -> Any:
    value = getattr(column.default, "arg", None)
    return None if callable(value) else value


_DEFAULTS: dict[str, Any] = {c.name: _default(c) for c in _COLUMNS}
_LIMITS: dict[str, int] = {
    c.name: c.type.length
    for c in _COLUMNS
    if isinstance(c.type, String) and c.type.length is not None
}


def refused_by_store(exc: BaseException) -> bool:
    """Whether the store refused these records for what is in them (so another batch would
    go in), rather than failing for every record (unreachable, locked, schema missing)."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = _sqlstate(exc)
        return sqlstate is not None and sqlstate[:2] in ("22", "23")
    # a value the driver could not bind (wrong type): raised before reaching the store
    return isinstance(exc, StatementError) and not isinstance(exc.orig, DBAPIError)


def _sqlstate(exc: DBAPIError) -> str | None:
    orig: Any = exc.orig
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _error_name(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    inner = getattr(orig, "__cause__", None) or orig
    return type(inner or exc).__name__


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """The row as the table takes it: every column present, strings clipped to their
    column and free of NUL (which PostgreSQL text cannot hold), a record id."""
    out = {name: row.get(name, default) for name, default in _DEFAULTS.items()}
    for name, limit in _LIMITS.items():
        value = out[name]
        if isinstance(value, str) and (len(value) > limit or "\x00" in value):
            out[name] = value.replace("\x00", "")[:limit]
    if not out["record_id"]:
        out["record_id"] = hashlib.sha256(orjson.dumps(row, default=str)).hexdigest()[:32]
    created = out["created_at"]
    if isinstance(created, str):
        out["created_at"] = datetime.fromisoformat(created)
    elif created is None:
        out["created_at"] = datetime.now(UTC)
    return out


class _SqliteMultiRowInsert:
    """One ``INSERT ... VALUES (...), (...)`` per batch on SQLite, not an executemany.

    aiosqlite runs the driver in a thread, and the driver takes the GIL back after every
    row of an executemany; with the event loop busy serving requests each take waits up
    to the switch interval, and the writer fell to ~100 records/s (bench/README.md). One
    statement per batch takes it a handful of times. Values are bound with the columns'
    own SQLAlchemy processors, as ``insert()`` would.
    """

    MAX_VARIABLES = 32_766  # SQLite >= 3.32

    def __init__(self, dialect: Any) -> None:
        self._names = [c.name for c in _COLUMNS]
        self._processors = [c.type._cached_bind_processor(dialect) for c in _COLUMNS]
        self.max_rows = self.MAX_VARIABLES // len(self._names)
        self._sql: dict[int, str] = {}

    def statement(self, rows: list[dict[str, Any]]) -> tuple[str, tuple[Any, ...]]:
        assert len(rows) <= self.max_rows
        sql = self._sql.get(len(rows))
        if sql is None:
            one = "(" + ",".join("?" * len(self._names)) + ")"
            sql = (
                f"INSERT INTO {_TABLE.name} ({','.join(self._names)}) VALUES "
                + ",".join([one] * len(rows))
                + " ON CONFLICT (record_id) DO NOTHING"
            )
            if len(self._sql) < 8:  # the full batch size, mostly; others are rare
                self._sql[len(rows)] = sql
        params: list[Any] = []
        pairs = list(zip(self._names, self._processors, strict=True))
        for row in rows:
            params.extend(row[n] if p is None else p(row[n]) for n, p in pairs)
        return sql, tuple(params)


class RecordWriter:
    def __init__(
        self,
        db: Database,
        *,
        spool_dir: Path,
        dead_letter_dir: Path | None = None,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        max_pending: int = 20_000,
        on_dead_letter: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._spool_dir = spool_dir
        self._dead_letter_dir = dead_letter_dir or spool_dir.parent / "dead-letter"
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._max_pending = max_pending
        self._on_dead_letter = on_dead_letter
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._overflowing = False
        self._overflow: asyncio.Task[None] | None = None  # held: the loop keeps weak refs
        self._closing = False
        self._insert = self._statement()
        dialect = db.engine.dialect
        self._sqlite = _SqliteMultiRowInsert(dialect) if dialect.name == "sqlite" else None
        self.written = 0
        self.dead_lettered = 0
        self.spooled = 0
        """Records waiting in spool files."""
        self._spool_counts: dict[Path, int] = {}

    def _statement(self) -> Insert:
        backend = self._db.engine.dialect.name
        if backend == "postgresql":
            return pg_insert(_TABLE).on_conflict_do_nothing(index_elements=["record_id"])
        if backend == "sqlite":
            return sqlite_insert(_TABLE).on_conflict_do_nothing(index_elements=["record_id"])
        return insert(_TABLE)

    async def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        async with self._db.engine.begin() as conn:
            if self._sqlite is not None:
                sql, params = self._sqlite.statement([normalize(r) for r in rows])
                await conn.exec_driver_sql(sql, params)
            else:
                await conn.execute(self._insert, [normalize(r) for r in rows])

    def add(self, record: dict[str, Any]) -> None:
        """Queue one record (a dict of ``RequestRow`` columns). Never blocks."""
        self._pending.append(record)
        if len(self._pending) >= self._batch_size:
            self._wakeup.set()
        if len(self._pending) > self._max_pending and not self._overflowing:
            self._overflowing = True
            self._overflow = asyncio.get_running_loop().create_task(self._spool_overflow())

    @property
    def pending(self) -> int:
        """Records queued in memory."""
        return len(self._pending)

    @property
    def backlog(self) -> int:
        """Records not yet in the store: in memory and in spool files."""
        return len(self._pending) + self.spooled

    @property
    def healthy(self) -> bool:
        """Whether the writer keeps up: false once records have to wait on disk."""
        return self.backlog < self._max_pending

    async def start(self) -> None:
        """Start writing; spooled records are replayed in the background, never here."""
        self._count_spooled()
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closing:
            # after a failure, wait out the backoff (new records do not cut it short)
            event = self._closed if backoff else self._wakeup
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=backoff or self._interval)
            self._wakeup.clear()
            try:
                await self.flush()
                if len(self._pending) < self._batch_size and not self._closing:
                    await self._drain_one_spool_file()
                backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - keep the records, retry later
                backoff = min(max(backoff * 2, self._interval), 10.0)
                log.warning(
                    "record_flush_failed",
                    error_type=_error_name(exc),
                    pending=self.pending,
                    spooled=self.spooled,
                    retry_in_s=backoff,
                )

    async def flush(self) -> None:
        """Write what is queued now, in batches; records added meanwhile wait for the next
        flush, so a steady load makes fewer, larger inserts. Raises, keeping the records,
        if the store cannot take them."""
        async with self._lock:
            remaining = len(self._pending)
            while remaining > 0 and self._pending:
                size = min(self._batch_size, remaining, len(self._pending))
                batch = [self._pending.popleft() for _ in range(size)]
                remaining -= size
                try:
                    await self._write(batch)
                except BaseException:
                    self._pending.extendleft(reversed(batch))
                    raise

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; isolate and dead-letter any the store refuses."""
        if self._sqlite is not None and len(rows) > self._sqlite.max_rows:
            middle = len(rows) // 2
            await self._write(rows[:middle])
            await self._write(rows[middle:])
            return
        try:
            await self._insert_rows(rows)
        except Exception as exc:
            if not refused_by_store(exc):
                raise
            if len(rows) == 1:
                self._dead_letter(rows[0], exc)
                return
            middle = len(rows) // 2
            await self._write(rows[:middle])
            await self._write(rows[middle:])
            return
        self.written += len(rows)

    def _dead_letter(self, row: dict[str, Any], exc: BaseException) -> None:
        self._dead_letter_dir.mkdir(parents=True, exist_ok=True)
        path = self._dead_letter_dir / "records.jsonl"
        entry = {
            "record": row,
            "error_type": _error_name(exc),
            "sqlstate": _sqlstate(exc) if isinstance(exc, DBAPIError) else None,
            "at": datetime.now(UTC),
        }
        with path.open("ab") as out:
            out.write(orjson.dumps(entry, default=str) + b"\n")
        self.dead_lettered += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter()
        log.error(
            "record_dead_lettered",
            record_id=row.get("record_id"),
            error_type=entry["error_type"],
            sqlstate=entry["sqlstate"],
            path=str(path),
        )

    async def _spool_overflow(self) -> None:
        """Move the newest records past half the bound to spool files, off the loop, until
        the queue is within its bound (records keep coming while a file is written)."""
        try:
            while len(self._pending) > self._max_pending:
                count = len(self._pending) - self._max_pending // 2
                rows = [self._pending.pop() for _ in range(count)]
                rows.reverse()
                path = await asyncio.to_thread(self._write_spool, rows)
                self.spooled += len(rows)
                log.warning("records_overflowed_to_disk", count=len(rows), path=str(path))
        finally:
            self._overflowing = False

    def _write_spool(self, rows: list[dict[str, Any]]) -> Path:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
        path = self._spool_dir / f"records-{stamp}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            out.write(b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows))
        partial.rename(path)  # a reader never sees half a file
        self._spool_counts[path] = len(rows)
        return path

    def _spool_files(self) -> list[Path]:
        return sorted(self._spool_dir.glob("records-*.jsonl")) if self._spool_dir.is_dir() else []

    def _count_spooled(self) -> list[Path]:
        """The spool files now, and ``spooled`` counted from them: other processes of the
        same data directory (``serve --workers N``) spool and drain there too."""
        files = self._spool_files()
        counts = {p: self._spool_counts.get(p) or _count_lines(p) for p in files}
        self._spool_counts = counts
        self.spooled = sum(counts.values())
        return files

    async def _drain_one_spool_file(self) -> None:
        """Replay the oldest spool file no other process is replaying; raises (keeping the
        file) if the store cannot take it. A replay interrupted half-way is harmless:
        stored record ids are skipped."""
        for path in self._count_spooled():
            claimed = _claim(path)
            if claimed is None:
                continue  # another process of this data directory (a worker, --workers N)
            try:
                await self._replay(path, claimed)
            finally:
                claimed.close()
            self._count_spooled()
            return

    async def _replay(self, path: Path, handle: BinaryIO) -> None:
        lines = [line for line in (await asyncio.to_thread(handle.read)).splitlines() if line]
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._dead_letter({"spool_file": path.name, "line": number}, exc)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                self._dead_letter({"spool_file": path.name, "line": number}, TypeError())
        for start in range(0, len(rows), self._batch_size):
            async with self._lock:
                await self._write(rows[start : start + self._batch_size])
        # while still holding the lock, so no one replays it again
        await asyncio.to_thread(path.unlink, True)
        log.info("records_replayed", path=str(path), count=len(rows))

    async def aclose(self) -> None:
        self._closing = True
        self._wakeup.set()
        self._closed.set()
        for task in (self._task, self._overflow):
            if task is not None:
                await task
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - the store is gone: spool instead of losing
            rows = list(self._pending)
            self._pending.clear()
            if not rows:
                return
            path = self._write_spool(rows)
            log.error("records_spooled", error_type=_error_name(exc), count=len(rows),
                      path=str(path))  # fmt: skip


def _claim(path: Path) -> BinaryIO | None:
    """The file, opened and locked for this process; None if another holds it or has
    already replayed it. The lock goes with the process, so a replayer killed half-way
    leaves the file to the next one."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
            raise FileNotFoundError(path)  # replayed and removed while we waited
    except (BlockingIOError, FileNotFoundError):
        handle.close()
        return None
    return handle


def _count_lines(path: Path) -> int:
    with contextlib.suppress(OSError), path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())
    return 0
