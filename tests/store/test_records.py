"""The batched record writer, against real SQLite and PostgreSQL stores: batches, flushes
on close, never writes a record twice, isolates what the store refuses, bounds its memory
and replays its spool in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from guarita.store.database import Database
from guarita.store.models import RequestRow
from guarita.store.records import RecordWriter, new_record_id
from tests.helpers import query


def record(i: int, **changes: Any) -> dict[str, Any]:
    row = {
        "record_id": new_record_id(),
        "request_id": f"r{i}",
        "created_at": datetime.now(UTC),
        "key_id": None,
        "endpoint": "chat.completions",
        "agent": None,
        "model": "m",
        "provider": "scripted",
        "upstream_model": "m",
        "status": "success",
        "status_code": 200,
        "error_type": None,
        "stream": False,
        "input_tokens": i,
        "output_tokens": 1,
        "cost_usd": 0.0,
        "latency_ms": 1.0,
        "session_id": None,
    }
    row.update(changes)
    return row


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    await database.migrate()
    yield database
    await database.aclose()


def writer_for(db: Database, tmp_path: Path, **options: Any) -> RecordWriter:
    options.setdefault("flush_interval_s", 60)
    return RecordWriter(db, spool_dir=tmp_path / "spool", **options)


async def stored(db: Database, sql: str = "SELECT request_id FROM requests") -> list[Any]:
    async with db.engine.connect() as conn:
        return [row[0] for row in await conn.execute(text(sql))]


async def poll(predicate: Any, *, within: float = 20.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def drop_table(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE requests"))


async def create_table(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda c: RequestRow.__table__.create(c))  # type: ignore[attr-defined]


async def test_records_are_flushed_on_close(db: Database, store_url: str, tmp_path: Path) -> None:
    writer = writer_for(db, tmp_path, batch_size=10)
    await writer.start()
    for i in range(25):
        writer.add(record(i))
    await writer.aclose()
    rows = await query(
        store_url, "SELECT request_id, input_tokens FROM requests ORDER BY input_tokens"
    )
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(25)]
    assert writer.written == 25


async def test_a_refused_record_is_dead_lettered_and_the_rest_written(
    db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 1: one record the store refuses used to block every record behind it."""
    dead: list[int] = []
    writer = writer_for(db, tmp_path, batch_size=64, on_dead_letter=lambda: dead.append(1))
    await writer.start()
    for i in range(30):
        writer.add(record(i))
    bad = record(99, model=None, request_id="secret-value-in-the-bad-record")  # NOT NULL
    writer.add(bad)
    for i in range(30, 60):
        writer.add(record(i))
    await writer.flush()
    assert sorted(await stored(db)) == sorted(f"r{i}" for i in range(60))
    assert writer.pending == 0 and writer.dead_lettered == 1 and dead == [1]
    lines = (tmp_path / "dead-letter" / "records.jsonl").read_bytes().splitlines()
    assert len(lines) == 1
    entry = orjson.loads(lines[0])
    assert entry["record"]["record_id"] == bad["record_id"]
    assert entry["error_type"] in ("IntegrityError", "NotNullViolationError")
    out = capsys.readouterr().out
    assert "record_dead_lettered" in out and bad["record_id"] in out
    assert "secret-value-in-the-bad-record" not in out  # the log line names, never shows
    writer.add(record(100))  # and the writer goes on
    await writer.aclose()
    assert "r100" in await stored(db)


async def test_long_request_ids_and_overlong_values_are_stored(
    db: Database, tmp_path: Path
) -> None:
    writer = writer_for(db, tmp_path)
    await writer.start()
    long_id = "x" * 128
    writer.add(record(1, request_id=long_id))
    writer.add(record(2, upstream_model="u" * 500 + "\x00"))  # an upstream's odd model name
    await writer.aclose()
    assert writer.dead_lettered == 0
    assert long_id in await stored(db)
    models = await stored(db, "SELECT upstream_model FROM requests ORDER BY input_tokens")
    assert models[1] == "u" * 200


async def test_concurrent_flushes_write_each_record_once(db: Database, tmp_path: Path) -> None:
    """Finding 2: unserialised flushes inserted the same batch several times."""
    writer = writer_for(db, tmp_path, batch_size=50)
    await writer.start()
    added = 0

    async def add_some(n: int) -> None:
        nonlocal added
        for _ in range(n):
            writer.add(record(added))
            added += 1
            if added % 37 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(
        add_some(400), *(writer.flush() for _ in range(6)), add_some(400), writer.flush()
    )
    await writer.aclose()
    ids = await stored(db, "SELECT record_id FROM requests")
    assert len(ids) == added == 800
    assert len(set(ids)) == 800


async def test_writing_the_same_records_again_stores_them_once(
    db: Database, tmp_path: Path
) -> None:
    writer = writer_for(db, tmp_path)
    await writer.start()
    rows = [record(i) for i in range(20)]
    for row in rows:
        writer.add(row)
    await writer.flush()
    for row in rows:  # a retry after a lost commit, or a spool replayed twice
        writer.add(dict(row))
    await writer.aclose()
    assert len(await stored(db)) == 20


async def test_a_store_outage_keeps_every_record(db: Database, tmp_path: Path) -> None:
    """Failures that are not about a record (here: the table is gone) never dead-letter."""
    writer = writer_for(db, tmp_path)
    await writer.start()
    await drop_table(db)
    for i in range(10):
        writer.add(record(i))
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        await writer.flush()
    assert writer.pending == 10 and writer.dead_lettered == 0
    await create_table(db)
    await writer.flush()
    await writer.aclose()
    assert len(await stored(db)) == 10


async def test_the_spool_is_replayed_in_the_background(db: Database, tmp_path: Path) -> None:
    """Finding 1: a spool holding a bad record made every later start fail."""
    spool = tmp_path / "spool"
    spool.mkdir()
    good = [record(i) for i in range(3)]
    lines = [orjson.dumps(r) for r in good]
    lines.append(b"{not json")
    lines.append(orjson.dumps(record(9, status_code=None)))  # the store refuses it
    old = record(4)
    del old["record_id"]
    del old["session_id"]
    lines.append(orjson.dumps(old))  # written by an older version: no record id
    (spool / "records-20260101T000000000000.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    writer = writer_for(db, tmp_path, flush_interval_s=0.05)
    await writer.start()
    assert writer.spooled == 6

    async def replayed() -> bool:
        return not list(spool.glob("*.jsonl"))

    await poll(replayed, what="the spool replay")
    await writer.aclose()
    assert sorted(await stored(db)) == ["r0", "r1", "r2", "r4"]
    assert writer.dead_lettered == 2 and writer.spooled == 0


async def test_the_backlog_is_bounded_and_overflows_to_disk(db: Database, tmp_path: Path) -> None:
    """Finding 3: with the store too slow or away, memory grew without end."""
    writer = writer_for(db, tmp_path, max_pending=100, batch_size=50, flush_interval_s=0.05)
    await writer.start()
    await drop_table(db)
    for i in range(1000):
        writer.add(record(i))
        if i % 100 == 0:
            await asyncio.sleep(0)

    async def overflowed() -> bool:
        return writer.pending <= 100 and writer.spooled >= 900

    await poll(overflowed, what="records to overflow to disk")
    assert writer.backlog == 1000 and not writer.healthy
    await create_table(db)

    async def caught_up() -> bool:
        return writer.backlog == 0

    await poll(caught_up, within=60, what="the writer to catch up")
    await writer.aclose()
    assert writer.healthy
    ids = await stored(db, "SELECT record_id FROM requests")
    assert len(ids) == len(set(ids)) == 1000


async def test_two_writers_on_one_spool_replay_each_file_once(db: Database, tmp_path: Path) -> None:
    """Processes sharing a data directory (``serve --workers N``, a worker beside the API)
    drain the same spool: each file is replayed by one of them."""
    spool = tmp_path / "spool"
    spool.mkdir()
    for n in range(4):
        rows = [orjson.dumps(record(10 * n + i)) for i in range(3)]
        rows.append(orjson.dumps(record(99, model=None)))  # refused: dead-lettered once
        (spool / f"records-2026010{n}T000000000000.jsonl").write_bytes(b"\n".join(rows))
    first = writer_for(db, tmp_path, flush_interval_s=0.01)
    second = writer_for(db, tmp_path, flush_interval_s=0.01)
    await asyncio.gather(first.start(), second.start())

    async def replayed() -> bool:
        return not list(spool.glob("*.jsonl"))

    await poll(replayed, what="the spool replay")
    await asyncio.gather(first.aclose(), second.aclose())
    assert len(await stored(db)) == 12
    assert first.dead_lettered + second.dead_lettered == 4
    dead = (tmp_path / "dead-letter" / "records.jsonl").read_bytes().splitlines()
    assert len(dead) == 4
