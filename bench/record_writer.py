"""Sustained rate of the request-record writer on SQLite and PostgreSQL.

Adds records in bursts like a busy gateway's while the writer's background task writes
them, once with the event loop otherwise idle and once with it saturated by other work
(as under load, when the writer competes for the loop and the GIL); reports records per
second from the first add to the last record stored, and the peak backlog. Usage:

    .venv/bin/python bench/record_writer.py [--records 50000] [--postgres URL] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.store.database import Database  # noqa: E402
from guarita.store.records import RecordWriter, new_record_id  # noqa: E402


def record(i: int) -> dict[str, Any]:
    return {
        "record_id": new_record_id(), "request_id": secrets.token_hex(16),
        "created_at": datetime.now(UTC), "key_id": "k_0123456789abcdef",
        "endpoint": "chat.completions", "agent": "bench", "model": "bench-model",
        "provider": "openai", "upstream_model": "bench-model", "status": "success",
        "status_code": 200, "error_type": None, "stream": False, "input_tokens": 21,
        "output_tokens": 9, "cost_usd": 0.000198, "latency_ms": 21.5, "session_id": None,
        "served_by": "bench-model", "deployment": "bench-model", "fallback_level": "primary",
    }  # fmt: skip


async def busy_loop(stop: asyncio.Event) -> None:
    """Keeps the event loop (and the GIL) as busy as a saturated gateway's: pure-Python
    work in slices of about a millisecond, turning the loop between them."""
    payload = {"choices": [{"message": {"content": "x" * 200}}], "usage": {"a": 1}}
    while not stop.is_set():
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            str(payload)
        await asyncio.sleep(0)


async def run(url: str, count: int, spool: Path, *, busy: bool) -> dict[str, float]:
    db = Database(url)
    await db.migrate()
    writer = RecordWriter(db, spool_dir=spool, max_pending=count * 2)
    await writer.start()
    stop = asyncio.Event()
    competitor = asyncio.create_task(busy_loop(stop)) if busy else None
    records = [record(i) for i in range(count)]
    started = time.perf_counter()
    peak = 0
    for i, row in enumerate(records):
        writer.add(row)
        if i % 50 == 49:  # a burst of answered requests, then the loop turns
            peak = max(peak, writer.pending)
            await asyncio.sleep(0)
    while writer.written < count:  # noqa: ASYNC110 - polling the writer's own counter
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    if competitor is not None:
        await competitor
    await writer.aclose()
    await db.aclose()
    return {"rate": count / elapsed, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--postgres", default=os.environ.get(
        "GUARITA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))  # fmt: skip
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db")]
        pg_name = None
        if not args.skip_postgres:
            sys.path.insert(0, str(ROOT))
            os.environ.setdefault("GUARITA_TEST_POSTGRES_URL", args.postgres)
            from tests.helpers import create_pg_database

            pg_name, pg_url = create_pg_database()
            targets.append(("postgresql", pg_url))
        try:
            print("| store | event loop | records | records/s | peak in memory |")
            print("|---|---|---|---|---|")
            for name, url in targets:
                for busy in (False, True):
                    spool = Path(tmp) / f"spool-{name}-{busy}"
                    r = asyncio.run(run(url, args.records, spool, busy=busy))
                    loop = "saturated" if busy else "idle"
                    print(f"| {name} | {loop} | {args.records} | {r['rate']:,.0f} "
                          f"| {r['peak']:,.0f} |")  # fmt: skip
        finally:
            if pg_name:
                from tests.helpers import drop_pg_database

                drop_pg_database(pg_name)


if __name__ == "__main__":
    main()
