"""Rows written in batches by a background task, off the request's hot path: the one
implementation behind request records (:mod:`guarita.store.records`) and audit entries
(:mod:`guarita.store.audit`).

What it promises: a row handed to :meth:`BatchWriter.add` is written once, and nothing
stops the writing of the others.

- Every row carries its own id (``id_field``); a subclass's insert skips ids already
  stored, so a batch written twice (a retry after a lost commit, a spool replayed by two
  processes) is stored once. Flushes are serialised and take their batch out of the queue
  before writing, so concurrent flushes never write the same rows.
- A row the store refuses (a value too long, a NOT NULL broken: the store's "data" or
  "integrity" errors) is isolated by writing the batch in halves, down to one row, and
  that one goes to a dead-letter file (``<kind>.jsonl`` under ``dead_letter_dir``) with a
  metric and a log line that names it but holds none of its values. Any other failure
  (store unreachable, locked, missing table) keeps every row and retries.
- The queue in memory is bounded: past ``max_pending`` the newest rows are spooled to
  JSON-lines files in ``spool_dir``, which the writer drains when it has caught up. On
  shutdown, what the store cannot take is spooled too. Spool files are replayed in the
  background, so a bad or unreadable spool never stops a start.

A subclass says what it writes (``kind``, ``item``, ``id_field``) and how
(:meth:`BatchWriter._insert_rows`, one transaction per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import orjson
import structlog
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from guarita.store.database import Database

__all__ = ["BatchWriter", "error_name", "refused_by_store", "sqlstate"]

log = structlog.get_logger("guarita.records")


def refused_by_store(exc: BaseException) -> bool:
    """Whether the store refused these rows for what is in them (so another batch would go
    in), rather than failing for every row (unreachable, locked, schema missing)."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    if isinstance(exc, DBAPIError):
        state = sqlstate(exc)
        return state is not None and state[:2] in ("22", "23")
    # a value the driver could not bind (wrong type): raised before reaching the store
    return isinstance(exc, StatementError) and not isinstance(exc.orig, DBAPIError)


def sqlstate(exc: DBAPIError) -> str | None:
    orig: Any = exc.orig
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def error_name(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    inner = getattr(orig, "__cause__", None) or orig
    return type(inner or exc).__name__


class BatchWriter:
    """Batches, spools and dead-letters rows of one kind; see the module's docstring."""

    kind: ClassVar[str] = "records"
    """Plural, in spool file names (``<kind>-….jsonl``), the dead-letter file and logs."""
    item: ClassVar[str] = "record"
    """Singular, in log events and the dead-letter file's entries."""
    id_field: ClassVar[str] = "record_id"
    """The row's own id, named (never its values) in a dead-letter log line."""

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
        self.written = 0
        self.dead_lettered = 0
        self.spooled = 0
        """Rows waiting in spool files."""
        self._spool_counts: dict[Path, int] = {}

    # -- what a subclass provides --------------------------------------------------------

    async def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        """Store ``rows`` in one transaction, skipping ids already stored."""
        raise NotImplementedError

    def _max_rows(self) -> int | None:
        """The most rows one insert takes (larger batches are split), if bounded."""
        return None

    # -- the queue -----------------------------------------------------------------------

    def add(self, row: dict[str, Any]) -> None:
        """Queue one row. Never blocks."""
        self._pending.append(row)
        if len(self._pending) >= self._batch_size:
            self._wakeup.set()
        if len(self._pending) > self._max_pending and not self._overflowing:
            self._overflowing = True
            self._overflow = asyncio.get_running_loop().create_task(self._spool_overflow())

    @property
    def pending(self) -> int:
        """Rows queued in memory."""
        return len(self._pending)

    @property
    def backlog(self) -> int:
        """Rows not yet in the store: in memory and in spool files."""
        return len(self._pending) + self.spooled

    @property
    def healthy(self) -> bool:
        """Whether the writer keeps up: false once rows have to wait on disk."""
        return self.backlog < self._max_pending

    async def start(self) -> None:
        """Start writing; spooled rows are replayed in the background, never here."""
        self._count_spooled()
        self._task = asyncio.create_task(self._run(), name=f"{self.kind}-writer")

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closing:
            # after a failure, wait out the backoff (new rows do not cut it short)
            event = self._closed if backoff else self._wakeup
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=backoff or self._interval)
            self._wakeup.clear()
            try:
                await self.flush()
                if len(self._pending) < self._batch_size and not self._closing:
                    await self._drain_one_spool_file()
                backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - keep the rows, retry later
                backoff = min(max(backoff * 2, self._interval), 10.0)
                log.warning(
                    f"{self.item}_flush_failed",
                    error_type=error_name(exc),
                    pending=self.pending,
                    spooled=self.spooled,
                    retry_in_s=backoff,
                )

    async def flush(self) -> None:
        """Write what is queued now, in batches; rows added meanwhile wait for the next
        flush, so a steady load makes fewer, larger inserts. Raises, keeping the rows, if
        the store cannot take them."""
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
        most = self._max_rows()
        if most is not None and len(rows) > most:
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
        path = self._dead_letter_dir / f"{self.kind}.jsonl"
        entry = {
            self.item: row,
            "error_type": error_name(exc),
            "sqlstate": sqlstate(exc) if isinstance(exc, DBAPIError) else None,
            "at": datetime.now(UTC),
        }
        with path.open("ab") as out:
            out.write(orjson.dumps(entry, default=str) + b"\n")
        self.dead_lettered += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter()
        log.error(
            f"{self.item}_dead_lettered",
            error_type=entry["error_type"],
            sqlstate=entry["sqlstate"],
            path=str(path),
            **{self.id_field: row.get(self.id_field)},
        )

    # -- the spool -----------------------------------------------------------------------

    async def _spool_overflow(self) -> None:
        """Move the newest rows past half the bound to spool files, off the loop, until the
        queue is within its bound (rows keep coming while a file is written)."""
        try:
            while len(self._pending) > self._max_pending:
                count = len(self._pending) - self._max_pending // 2
                rows = [self._pending.pop() for _ in range(count)]
                rows.reverse()
                path = await asyncio.to_thread(self._write_spool, rows)
                self.spooled += len(rows)
                log.warning(f"{self.kind}_overflowed_to_disk", count=len(rows), path=str(path))
        finally:
            self._overflowing = False

    def _write_spool(self, rows: list[dict[str, Any]]) -> Path:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
        name = f"{self.kind}-{stamp}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
        path = self._spool_dir / name
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            out.write(b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows))
        partial.rename(path)  # a reader never sees half a file
        self._spool_counts[path] = len(rows)
        return path

    def _spool_files(self) -> list[Path]:
        if not self._spool_dir.is_dir():
            return []
        return sorted(self._spool_dir.glob(f"{self.kind}-*.jsonl"))

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
        stored ids are skipped."""
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
        log.info(f"{self.kind}_replayed", path=str(path), count=len(rows))

    async def aclose(self) -> None:
        """Stop, writing what is queued; what the store cannot take now is spooled."""
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
            log.error(f"{self.kind}_spooled", error_type=error_name(exc), count=len(rows),
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
