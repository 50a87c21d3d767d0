"""The audit log's chain: append, verify, list (table ``audit_log``, head ``audit_head``).

Each entry's ``hash`` is the SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8)
of its fields and the previous entry's hash::

    {"action", "actor", "category", "client_ip", "created_at", "details", "entry_id",
     "outcome", "prev_hash", "request_id", "target"}

``created_at`` in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; the first entry's ``prev_hash``
is 64 zeros. ``audit_head`` (one row, ``id`` 1) holds the last ``seq`` and ``hash``.

Appends serialise on the head row: one transaction locks it (``SELECT … FOR UPDATE`` on
PostgreSQL; on SQLite the transaction's first statement is a write, which takes the
database's write lock), numbers the batch's entries after it, chains them, inserts them
and moves the head. Entries whose ``entry_id`` is already stored are skipped, so a spooled
batch written twice is stored once. :func:`verify` walks the table in ``seq`` order and
names the first broken link: an edited row (its hash), a deleted or inserted one (a gap in
``seq``, a ``prev_hash`` that is not the previous row's hash), deleted last rows (the head
is ahead of the table).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import String, Table, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from guarita.store.batch_writer import BatchWriter
from guarita.store.database import Database
from guarita.store.models import AuditEntry, AuditHead
from guarita.types import new_record_id

__all__ = [
    "CATEGORIES",
    "GENESIS",
    "AuditChain",
    "AuditQuery",
    "AuditWriter",
    "Verification",
    "entry_hash",
    "entry_json",
    "normalize_entry",
]

Category = Literal["access", "data", "change"]
CATEGORIES: tuple[str, ...] = ("access", "data", "change")
OUTCOMES: tuple[str, ...] = ("success", "denied", "failure")
GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""
HASHED = (
    "entry_id", "created_at", "category", "action", "actor", "target", "outcome",
    "request_id", "client_ip", "details",
)  # fmt: skip
"""The fields an entry's hash covers, with its ``prev_hash``."""

_TABLE: Table = AuditEntry.__table__  # type: ignore[assignment]
_HEAD: Table = AuditHead.__table__  # type: ignore[assignment]
_LIMITS: dict[str, int] = {
    c.name: c.type.length
    for c in _TABLE.columns
    if isinstance(c.type, String) and c.type.length is not None and c.name in HASHED
}
_PAGE = 1000


def _utc(moment: datetime) -> datetime:
    """Aware UTC (a naive time, as SQLite returns it, is UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _clean(value: Any) -> Any:
    """JSON values without NUL characters (PostgreSQL text cannot hold them)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def normalize_entry(row: dict[str, Any]) -> dict[str, Any]:
    """The entry as it is hashed and stored: strings clipped to their columns and free of
    NUL, ``created_at`` aware UTC to the microsecond, ``details`` as plain JSON (what the
    store gives back is what was hashed), an ``entry_id``."""
    out: dict[str, Any] = {}
    for name in HASHED:
        value = row.get(name)
        if name in _LIMITS and value is not None:
            value = str(value).replace("\x00", "")[: _LIMITS[name]]
        out[name] = value
    out["entry_id"] = out["entry_id"] or new_record_id()
    out["actor"] = out["actor"] or "anonymous"
    created = out["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created.replace("Z", "+00:00"))
    out["created_at"] = _utc(created) if isinstance(created, datetime) else datetime.now(UTC)
    details = out["details"]
    if details is not None:
        details = _clean(orjson.loads(orjson.dumps(details, default=str)))
        out["details"] = details if isinstance(details, dict) else {"value": details}
    return out


def entry_hash(entry: dict[str, Any], prev_hash: str) -> str:
    """The SHA-256 (hex) of the canonical JSON of ``entry``'s fields and ``prev_hash``."""
    fields = {name: entry.get(name) for name in HASHED}
    fields["created_at"] = iso(entry["created_at"])
    fields["prev_hash"] = prev_hash
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def entry_json(row: Any) -> dict[str, Any]:
    """A stored entry (a row of ``audit_log``) as the API and the CLI show it."""
    m = row._mapping if hasattr(row, "_mapping") else row
    return {
        "seq": m["seq"],
        "entry_id": m["entry_id"],
        "created_at": iso(m["created_at"]),
        "category": m["category"],
        "action": m["action"],
        "actor": m["actor"],
        "target": m["target"],
        "outcome": m["outcome"],
        "request_id": m["request_id"],
        "client_ip": m["client_ip"],
        "details": m["details"],
        "prev_hash": m["prev_hash"],
        "hash": m["hash"],
    }


@dataclass(slots=True, frozen=True)
class Verification:
    ok: bool
    entries: int
    """Entries checked (up to the first broken one)."""
    broken_seq: int | None = None
    reason: str | None = None

    def message(self) -> str:
        if self.ok:
            return f"ok: {self.entries} entries"
        return f"broken at seq {self.broken_seq}: {self.reason}"


@dataclass(slots=True, frozen=True, kw_only=True)
class AuditQuery:
    """Which entries to list: every filter given must match; ``after`` is a cursor (the
    ``seq`` of the last entry seen), entries come in ``seq`` order."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    category: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    """Inclusive."""
    until: datetime | None = None
    """Exclusive."""
    after: int | None = None
    limit: int = 100


class _Walk:
    """Where a walk along the chain is: the last seq checked, its hash, rows checked."""

    def __init__(self) -> None:
        self.last, self.prev, self.count = 0, GENESIS, 0

    def broken(self, seq: int, reason: str) -> Verification:
        return Verification(False, self.count, seq, reason)

    def step(self, row: Any) -> Verification | None:
        """Check the next row; the break it shows, if any."""
        expected = self.last + 1
        if row.seq != expected:
            return self.broken(expected, f"seq {expected} is missing (a deleted row)")
        if row.prev_hash != self.prev:
            return self.broken(
                row.seq,
                f"its prev_hash is not the hash of seq {self.last} "
                "(a row deleted, inserted or moved)",
            )
        if entry_hash(row._mapping, row.prev_hash) != row.hash:
            return self.broken(row.seq, "its hash does not match its fields (an edited row)")
        self.last, self.prev, self.count = row.seq, row.hash, self.count + 1
        return None


class AuditChain:
    """The hash-chained ``audit_log`` table of one store."""

    def __init__(self, db: Database) -> None:
        self._db = db
        dialect = db.engine.dialect.name
        self._postgres = dialect == "postgresql"
        values = {"id": 1, "seq": 0, "hash": GENESIS}
        if self._postgres:
            self._init_head: Any = pg_insert(_HEAD).values(values).on_conflict_do_nothing()
        elif dialect == "sqlite":
            self._init_head = sqlite_insert(_HEAD).values(values).on_conflict_do_nothing()
        else:  # pragma: no cover - the stores are SQLite and PostgreSQL
            self._init_head = insert(_HEAD).values(values)

    async def _lock_head(self, conn: AsyncConnection) -> tuple[int, str]:
        """The head, locked for this transaction (made on the first append). The first
        statement writes, so on SQLite the transaction holds the write lock from here."""
        await conn.execute(self._init_head)
        query = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)
        if self._postgres:
            query = query.with_for_update()
        head = (await conn.execute(query)).one()
        return int(head.seq), str(head.hash)

    async def append(self, rows: list[dict[str, Any]]) -> int:
        """Chain and store ``rows`` (in their order) in one transaction, skipping entry ids
        already stored; returns how many were stored."""
        entries = [normalize_entry(r) for r in rows]
        async with self._db.engine.begin() as conn:
            seq, prev = await self._lock_head(conn)
            ids = [e["entry_id"] for e in entries]
            found = await conn.scalars(select(_TABLE.c.entry_id).where(_TABLE.c.entry_id.in_(ids)))
            stored = set(found)
            # a row beyond the head (written outside this code) keeps its seq: the chain goes
            # on after it, from the head's hash, and verify names the break
            top = await conn.scalar(select(func.max(_TABLE.c.seq)))
            seq = max(seq, int(top or 0))
            values = []
            for entry in entries:
                if entry["entry_id"] in stored:
                    continue
                stored.add(entry["entry_id"])
                seq += 1
                digest = entry_hash(entry, prev)
                values.append({**entry, "seq": seq, "prev_hash": prev, "hash": digest})
                prev = digest
            if not values:
                return 0
            await conn.execute(insert(_TABLE), values)
            await conn.execute(update(_HEAD).where(_HEAD.c.id == 1).values(seq=seq, hash=prev))
        return len(values)

    async def head(self) -> tuple[int, str] | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(_HEAD.c.seq, _HEAD.c.hash))).first()
        return (int(row.seq), str(row.hash)) if row is not None else None

    async def _rows_after(self, seq: int, upto: int | None = None) -> list[Any]:
        query = select(_TABLE).where(_TABLE.c.seq > seq).order_by(_TABLE.c.seq).limit(_PAGE)
        if upto is not None:
            query = query.where(_TABLE.c.seq <= upto)
        async with self._db.engine.connect() as conn:
            return list(await conn.execute(query))

    async def verify(self) -> Verification:
        """Walk the chain in ``seq`` order; the first broken link, or ok. Safe while
        writers append: an entry and the head move in one transaction."""
        walk = _Walk()
        if (broken := await self._walk(walk)) is not None:
            return broken
        head = await self.head()
        if head is None:
            if walk.count == 0:
                return Verification(True, 0)
            return walk.broken(1, "the chain head (audit_head) is missing")
        head_seq, head_hash = head
        if head_seq > walk.last:  # appended since the walk, or the last rows deleted
            if (broken := await self._walk(walk, upto=head_seq)) is not None:
                return broken
            if head_seq > walk.last:
                missing = f"seq {walk.last + 1} to {head_seq} are missing"
                return walk.broken(walk.last + 1, f"{missing} (the last rows deleted)")
        if head_seq < walk.last:
            # a legitimate append moves the head with its rows: these came some other way
            return walk.broken(
                head_seq + 1,
                f"rows after the chain head (seq {head_seq}) were not appended by the "
                "writer (an inserted row)",
            )
        if head_hash != walk.prev:
            return walk.broken(walk.last, "the chain head's hash is not this row's (edited)")
        return Verification(True, walk.count)

    async def _walk(self, walk: _Walk, upto: int | None = None) -> Verification | None:
        while rows := await self._rows_after(walk.last, upto):
            for row in rows:
                if (broken := walk.step(row)) is not None:
                    return broken
        return None

    async def list(self, query: AuditQuery) -> tuple[list[dict[str, Any]], bool]:
        """One page of entries matching ``query``, and whether more follow."""
        statement = select(_TABLE).order_by(_TABLE.c.seq).limit(query.limit + 1)
        for name in ("actor", "action", "target", "category", "outcome"):
            value = getattr(query, name)
            if value is not None:
                statement = statement.where(_TABLE.c[name] == value)
        if query.since is not None:
            statement = statement.where(_TABLE.c.created_at >= _utc(query.since))
        if query.until is not None:
            statement = statement.where(_TABLE.c.created_at < _utc(query.until))
        if query.after is not None:
            statement = statement.where(_TABLE.c.seq > query.after)
        async with self._db.engine.connect() as conn:
            rows = list(await conn.execute(statement))
        more = len(rows) > query.limit
        return [entry_json(r) for r in rows[: query.limit]], more


class AuditWriter(BatchWriter):
    """Audit entries, batched and spooled (``audit-*.jsonl``), appended to the chain."""

    kind = "audit"
    item = "audit_entry"
    id_field = "entry_id"

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, **options)
        self.chain = AuditChain(db)

    async def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        await self.chain.append(rows)
