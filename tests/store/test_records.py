"""The batched record writer: batches, flushes on close, spools when the store is gone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from guarita.store.database import Database
from guarita.store.models import RequestRecord
from guarita.store.records import RecordWriter
from tests.helpers import query


def record(i: int) -> dict[str, Any]:
    return {
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


async def test_records_are_flushed_on_close(store_url: str, tmp_path: Path) -> None:
    db = Database(store_url)
    await db.migrate()
    writer = RecordWriter(db, spool_dir=tmp_path / "spool", batch_size=10, flush_interval_s=60)
    await writer.start()
    for i in range(25):
        writer.add(record(i))
    await writer.aclose()
    await db.aclose()
    rows = await query(
        store_url, "SELECT request_id, input_tokens FROM requests ORDER BY input_tokens"
    )
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(25)]
    assert writer.written == 25


async def test_records_survive_a_store_failure_through_the_spool(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    db = Database(url)
    await db.migrate()
    writer = RecordWriter(db, spool_dir=tmp_path / "spool", batch_size=1000, flush_interval_s=60)
    await writer.start()
    for i in range(5):
        writer.add(record(i))
    async with db.engine.begin() as conn:  # the store loses the table under our feet
        await conn.execute(text("DROP TABLE requests"))
    await writer.aclose()
    spooled = list((tmp_path / "spool").glob("records-*.jsonl"))
    assert len(spooled) == 1 and len(spooled[0].read_text().splitlines()) == 5

    async with db.engine.begin() as conn:  # the store is back
        await conn.run_sync(lambda c: RequestRecord.__table__.create(c))  # type: ignore[attr-defined]
    replaying = RecordWriter(db, spool_dir=tmp_path / "spool")
    await replaying.start()
    await replaying.aclose()
    await db.aclose()
    rows = await query(url, "SELECT request_id FROM requests")
    assert sorted(r["request_id"] for r in rows) == [f"r{i}" for i in range(5)]
    assert not list((tmp_path / "spool").glob("*.jsonl"))
