"""Request records, written in batches by a background task, off the request's hot path.

What it promises: an answered request's record is written once, and nothing stops the
writing of the others. The batching, spooling and dead-lettering are
:class:`~guarita.store.batch_writer.BatchWriter`'s (shared with the audit log); this
module says how a batch of records goes in:

- Every record carries its own ``record_id``; inserts skip ids already stored, so a
  batch written twice (a retry after a lost commit, a spool replayed by two processes)
  is stored once.
- Values are fitted to their columns first (strings clipped, NUL removed), so the store
  refuses only what is really wrong; a refused record goes to ``records.jsonl`` under
  ``dead_letter_dir``, the rest are written.
- Spool files are ``records-*.jsonl`` in ``spool_dir``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Insert, String, Table, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from guarita.store.batch_writer import BatchWriter, refused_by_store
from guarita.store.database import Database
from guarita.store.models import RequestRow
from guarita.types import new_record_id

__all__ = ["RecordWriter", "new_record_id", "normalize", "refused_by_store"]

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


class RecordWriter(BatchWriter):
    """Request records (dicts of ``RequestRow`` columns) into the ``requests`` table."""

    kind = "records"
    item = "record"
    id_field = "record_id"

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, **options)
        self._insert = self._statement()
        dialect = db.engine.dialect
        self._sqlite = _SqliteMultiRowInsert(dialect) if dialect.name == "sqlite" else None

    def _statement(self) -> Insert:
        backend = self._db.engine.dialect.name
        if backend == "postgresql":
            return pg_insert(_TABLE).on_conflict_do_nothing(index_elements=["record_id"])
        if backend == "sqlite":
            return sqlite_insert(_TABLE).on_conflict_do_nothing(index_elements=["record_id"])
        return insert(_TABLE)

    def _max_rows(self) -> int | None:
        return self._sqlite.max_rows if self._sqlite is not None else None

    async def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        async with self._db.engine.begin() as conn:
            if self._sqlite is not None:
                sql, params = self._sqlite.statement([normalize(r) for r in rows])
                await conn.exec_driver_sql(sql, params)
            else:
                await conn.execute(self._insert, [normalize(r) for r in rows])
