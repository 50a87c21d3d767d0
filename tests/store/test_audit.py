"""The audit chain against real SQLite and PostgreSQL stores: concurrent writers (tasks and
processes) make one chain without gaps; an edited, deleted, moved or inserted row fails
verification naming its seq; spooled entries are written once; rewrites are idempotent."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from guarita.store.audit import (
    GENESIS,
    AuditChain,
    AuditQuery,
    AuditWriter,
    entry_hash,
    normalize_entry,
)
from guarita.store.database import Database
from guarita.telemetry.audit import AuditLog, actor_of, key_prefix
from guarita.types import Caller
from tests.helpers import ROOT, query

# a port nothing listens on: the store is unreachable
UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:9/none"


def entry(i: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "category": "change",
        "action": "key.created",
        "actor": "cli:ops",
        "target": f"key_{i:04d}",
        "outcome": "success",
        "details": {"tier": "pro", "n": i},
    }
    row.update(changes)
    return normalize_entry(row)


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    await database.migrate()
    yield database
    await database.aclose()


async def execute(db: Database, sql: str, **params: Any) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text(sql), params)


async def seqs(store_url: str) -> list[int]:
    return [r["seq"] for r in await query(store_url, "SELECT seq FROM audit_log ORDER BY seq")]


async def chained(db: Database, count: int) -> AuditChain:
    chain = AuditChain(db)
    assert await chain.append([entry(i) for i in range(count)]) == count
    assert (await chain.verify()).ok
    return chain


async def test_concurrent_writers_make_one_chain(
    db: Database, store_url: str, tmp_path: Path
) -> None:
    """Four writers, each with its own engine (its own connections), appending at once."""
    others = [Database(store_url) for _ in range(3)]
    writers = [
        AuditWriter(d, spool_dir=tmp_path / f"spool{n}", batch_size=7, flush_interval_s=0.01)
        for n, d in enumerate([db, *others])
    ]

    async def append(n: int, writer: AuditWriter) -> None:
        for i in range(60):
            writer.add(entry(i, actor=f"writer-{n}"))
            if i % 5 == 0:
                await asyncio.sleep(0)
                await writer.flush()

    try:
        await asyncio.gather(*(w.start() for w in writers))
        await asyncio.gather(*(append(n, w) for n, w in enumerate(writers)))
        await asyncio.gather(*(w.aclose() for w in writers))
    finally:
        for other in others:
            await other.aclose()
    assert await seqs(store_url) == list(range(1, 241))
    result = await AuditChain(db).verify()
    assert result.ok and result.entries == 240, result
    assert result.message() == "ok: 240 entries"
    assert await AuditChain(db).head() == (240, (await query(
        store_url, "SELECT hash FROM audit_log WHERE seq = 240"))[0]["hash"])  # fmt: skip


async def test_processes_appending_at_once_make_one_chain(db: Database, store_url: str) -> None:
    """Three processes against the same store (PostgreSQL; the SQLite file in embedded mode),
    each appending 60 entries in batches of 5, all at once."""
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started together, then waited for
            [sys.executable, "-m", "tests.store.audit_appender", store_url, f"proc-{n}", "60"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for n in range(3)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode(errors="replace")
    assert await seqs(store_url) == list(range(1, 181))
    rows = await query(store_url, "SELECT actor, target FROM audit_log")
    assert len({(r["actor"], r["target"]) for r in rows}) == 180
    result = await AuditChain(db).verify()
    assert result.ok and result.entries == 180, result


async def test_an_edited_field_fails_naming_its_seq(db: Database) -> None:
    chain = await chained(db, 6)
    await execute(db, "UPDATE audit_log SET outcome = 'denied' WHERE seq = 4")
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 4 and result.entries == 3
    assert "edited" in (result.reason or "")


async def test_edited_details_and_time_fail(db: Database) -> None:
    chain = await chained(db, 5)
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET created_at = :t WHERE seq = 2"),
            {"t": datetime.now(UTC) - timedelta(days=3)},
        )
    assert (await chain.verify()).broken_seq == 2


async def test_an_edited_hash_fails(db: Database) -> None:
    chain = await chained(db, 5)
    await execute(db, "UPDATE audit_log SET hash = :h WHERE seq = 3", h="f" * 64)
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 3


async def test_a_deleted_middle_row_fails_naming_its_seq(db: Database) -> None:
    chain = await chained(db, 6)
    await execute(db, "DELETE FROM audit_log WHERE seq = 3")
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 3
    assert "missing" in (result.reason or "")


async def test_a_deleted_first_row_fails(db: Database) -> None:
    chain = await chained(db, 3)
    await execute(db, "DELETE FROM audit_log WHERE seq = 1")
    assert (await chain.verify()).broken_seq == 1


async def test_a_deleted_last_row_fails_naming_its_seq(db: Database) -> None:
    chain = await chained(db, 6)
    await execute(db, "DELETE FROM audit_log WHERE seq = 6")
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 6 and result.entries == 5
    assert "last rows deleted" in (result.reason or "")


async def test_deleted_and_renumbered_rows_fail(db: Database) -> None:
    """Deleting a row and closing the gap (renumbering the rows after it) still breaks the
    chain: the row after it does not follow from the one before."""
    chain = await chained(db, 6)
    await execute(db, "DELETE FROM audit_log WHERE seq = 3")
    for seq in (4, 5, 6):
        await execute(db, "UPDATE audit_log SET seq = :new WHERE seq = :old", new=seq - 1, old=seq)
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 3


async def test_swapped_rows_fail_naming_the_first(db: Database) -> None:
    chain = await chained(db, 6)
    await execute(db, "UPDATE audit_log SET seq = 1000 WHERE seq = 2")
    await execute(db, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
    await execute(db, "UPDATE audit_log SET seq = 3 WHERE seq = 1000")
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 2
    assert "prev_hash" in (result.reason or "")


async def test_an_inserted_row_fails(db: Database, store_url: str) -> None:
    """A row added outside the writer, even one chained correctly onto the last (as
    someone who knows the scheme would), leaves the head behind; the writer's next
    append does not make it part of the chain."""
    chain = await chained(db, 4)
    [last] = await query(store_url, "SELECT hash FROM audit_log WHERE seq = 4")
    forged = entry(99, action="key.revoked")
    forged_hash = entry_hash(forged, last["hash"])
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_log (seq, entry_id, created_at, category, action, actor, "
                "target, outcome, details, prev_hash, hash) VALUES (5, :entry_id, :created_at, "
                ":category, :action, :actor, :target, :outcome, :details, :prev, :hash)"
            ),
            {
                **{k: forged[k] for k in ("entry_id", "category", "action", "actor", "target")},
                "outcome": forged["outcome"],
                "created_at": forged["created_at"],
                "details": orjson.dumps(forged["details"]).decode(),
                "prev": last["hash"],
                "hash": forged_hash,
            },
        )
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 5 and "inserted" in (result.reason or "")
    await chain.append([entry(100)])  # the writer goes on after the forged row's seq
    result = await chain.verify()
    assert not result.ok and result.broken_seq == 6, result


async def test_an_empty_log_verifies(db: Database) -> None:
    result = await AuditChain(db).verify()
    assert result.ok and result.entries == 0


async def test_a_batch_written_twice_is_stored_once(db: Database, store_url: str) -> None:
    chain = AuditChain(db)
    rows = [entry(i) for i in range(10)]
    assert await chain.append(rows) == 10
    assert await chain.append([*rows[:5], entry(10), *rows[5:]]) == 1  # only the new one
    assert await chain.append([dict(rows[0]), dict(rows[0])]) == 0
    assert await seqs(store_url) == list(range(1, 12))
    assert (await chain.verify()).ok


async def test_spooled_entries_are_written_once_when_the_store_is_back(
    db: Database, store_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "audit-spool"
    away = Database(UNREACHABLE)
    log = AuditLog(away, spool_dir=spool, flush_interval_s=0.01)
    for i in range(25):
        log.record("access", "auth.failed", "gua_abc…", f"/v1/models/{i}", "denied")
    await log.aclose()  # the store is away: spooled, not lost
    await away.aclose()
    files = list(spool.glob("audit-*.jsonl"))
    assert len(files) == 1 and len(files[0].read_bytes().splitlines()) == 25
    copy = tmp_path / "copy.jsonl"
    shutil.copy(files[0], copy)

    writer = AuditWriter(db, spool_dir=spool, flush_interval_s=0.01)
    await writer.start()
    assert writer.spooled == 25

    async def drained() -> bool:
        return not list(spool.glob("audit-*.jsonl"))

    await _poll(drained, what="the audit spool to be replayed")
    shutil.copy(copy, spool / "audit-20260101T000000000000-1-abcdef.jsonl")  # replayed again
    await _poll(drained, what="the second replay")
    await writer.aclose()
    assert await seqs(store_url) == list(range(1, 26))
    targets = [r["target"] for r in await query(store_url, "SELECT target FROM audit_log")]
    assert sorted(targets) == sorted(f"/v1/models/{i}" for i in range(25))
    assert (await AuditChain(db).verify()).ok


async def test_entries_queued_at_close_are_flushed(
    db: Database, store_url: str, tmp_path: Path
) -> None:
    log = AuditLog(db, spool_dir=tmp_path / "s", flush_interval_s=60)
    await log.start()
    for i in range(12):
        log.record("data", "data.read", "key_1", f"file:{i}", "success", request_id=f"r{i}")
    await log.aclose()
    assert await seqs(store_url) == list(range(1, 13))


async def test_list_filters_and_pages(db: Database) -> None:
    chain = AuditChain(db)
    await chain.append([entry(i, actor="a" if i % 2 else "b", outcome="denied" if i % 3 == 0
                              else "success") for i in range(20)])  # fmt: skip
    page, more = await chain.list(AuditQuery(actor="a", limit=4))
    assert [e["seq"] for e in page] == [2, 4, 6, 8] and more
    page, more = await chain.list(AuditQuery(actor="a", limit=4, after=page[-1]["seq"]))
    assert [e["seq"] for e in page] == [10, 12, 14, 16] and more
    page, more = await chain.list(AuditQuery(actor="a", after=16))
    assert [e["seq"] for e in page] == [18, 20] and not more
    denied, _ = await chain.list(AuditQuery(outcome="denied", category="change"))
    assert [e["seq"] for e in denied] == [1, 4, 7, 10, 13, 16, 19]
    assert (await chain.list(AuditQuery(target="key_0005")))[0][0]["seq"] == 6
    future = datetime.now(UTC) + timedelta(hours=1)
    assert (await chain.list(AuditQuery(since=future)))[0] == []
    assert len((await chain.list(AuditQuery(until=future, limit=1000)))[0]) == 20
    first = page[0]
    assert first["prev_hash"] != GENESIS and len(first["hash"]) == 64


def test_entries_are_fitted_to_their_columns() -> None:
    fitted = normalize_entry(
        {
            "category": "access",
            "action": "x" * 100,
            "actor": "a\x00b",
            "target": "t" * 900,
            "outcome": "success",
            "details": {"k\x00": ["v\x00", 1.5, None]},
        }
    )
    assert len(fitted["action"]) == 60 and fitted["actor"] == "ab" and len(fitted["target"]) == 500
    assert fitted["details"] == {"k": ["v", 1.5, None]}
    assert fitted["created_at"].tzinfo is not None and len(fitted["entry_id"]) == 32


def test_actors_and_key_prefixes() -> None:
    key = "gua_" + "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3t"
    assert key_prefix(key) == "gua_S3c…" and key[8:] not in key_prefix(key)
    assert key_prefix(None) == "missing" and key_prefix("short") == "…"
    assert actor_of(Caller(key_id="key_1", name="n", tier="pro")) == "key_1"
    assert actor_of(Caller.anonymous()) == "anonymous"

    token_caller = Caller(key_id="jwt:0123", name="n", tier="pro", subject="u-42", auth="jwt")
    assert actor_of(token_caller) == "jwt:u-42"


async def _poll(predicate: Any, *, within: float = 20.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
