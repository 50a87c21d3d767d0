"""Request records, written in batches by a background task, off the request's hot path.

A record is queued in memory when its request is answered; the writer inserts queued
records in batches (size or interval, whichever comes first). On shutdown the queue is
flushed; if the store cannot take them then, they are spooled to a JSON-lines file in the
data directory and replayed at the next start, so an answered request is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import insert

from guarita.store.database import Database
from guarita.store.models import RequestRecord

log = structlog.get_logger("guarita.records")


class RecordWriter:
    def __init__(
        self,
        db: Database,
        *,
        spool_dir: Path,
        batch_size: int = 256,
        flush_interval_s: float = 0.25,
    ) -> None:
        self._db = db
        self._spool_dir = spool_dir
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._pending: list[dict[str, Any]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0

    def add(self, record: dict[str, Any]) -> None:
        """Queue one record (a dict of ``RequestRecord`` columns). Never blocks."""
        self._pending.append(record)
        if len(self._pending) >= self._batch_size:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        await self._replay_spool()
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def _run(self) -> None:
        backoff = self._interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            try:
                await self.flush()
                backoff = self._interval
            except Exception as exc:  # noqa: BLE001 - keep the records, retry later
                backoff = min(backoff * 2, 10.0)
                log.warning(
                    "record_flush_failed", error=str(exc), pending=self.pending, retry_in_s=backoff
                )

    async def flush(self) -> None:
        """Write what is queued now (in batches); records added meanwhile wait for the next
        flush, so a steady load makes fewer, larger inserts."""
        remaining = len(self._pending)
        while remaining > 0 and self._pending:
            batch = self._pending[: min(self._batch_size, remaining)]
            remaining -= len(batch)
            async with self._db.engine.begin() as conn:
                await conn.execute(insert(RequestRecord), batch)
            del self._pending[: len(batch)]
            self.written += len(batch)

    async def aclose(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - the store is gone: spool instead of losing
            path = self._spool()
            log.error("records_spooled", error=str(exc), path=str(path))

    def _spool(self) -> Path:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"records-{datetime.now().strftime('%Y%m%dT%H%M%S%f')}.jsonl"
        with path.open("wb") as out:
            for record in self._pending:
                out.write(orjson.dumps(record) + b"\n")
        self._pending.clear()
        return path

    async def _replay_spool(self) -> None:
        if not self._spool_dir.is_dir():
            return
        for path in sorted(self._spool_dir.glob("records-*.jsonl")):
            rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            for row in rows:
                row["created_at"] = datetime.fromisoformat(row["created_at"])
            self._pending.extend(rows)
            await self.flush()
            path.unlink()
            log.info("records_replayed", path=str(path), count=len(rows))
