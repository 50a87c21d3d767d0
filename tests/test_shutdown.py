"""SIGTERM under load: every request the server answered is in the store afterwards; a
spool left by an earlier run, even one holding a record the store refuses, never stops a
start.

Request records are written in batches off the hot path; this checks that the batching
never costs a record on a clean stop, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
import secrets
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from tests.helpers import GuaritaServer, query, scale_out, wait_until

pytestmark = pytest.mark.slow


async def test_sigterm_under_load_loses_no_answered_request(store_url: str, tmp_path: Path) -> None:
    cfg = {
        "models": {"m": {"provider": "scripted", "options": {"delay_s": 0.02}}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        # a long flush interval: records sit in memory until shutdown flushes them
        "store": {"record_flush_interval_s": 30, "record_batch_size": 100000},
    }
    server = GuaritaServer(tmp_path, cfg, store_url=store_url)
    key = server.create_key("load")
    server.start()
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(
            base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=10
        ) as c:
            for _ in range(5000):  # bounded
                if stop.is_set():
                    return
                try:
                    r = c.post(
                        "/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    )
                except httpx.HTTPError:
                    return  # the server is going away
                if r.status_code == 200:
                    with lock:
                        answered.append(r.headers["x-request-id"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(answered) >= 150, timeout=60, what="150 answered requests")
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert '"event":"runtime_stopped"' in server.logs()
    assert "records_spooled" not in server.logs()
    rows = await query(store_url, "SELECT request_id FROM requests")
    stored = {r["request_id"] for r in rows}
    missing = set(answered) - stored
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the store"


async def test_a_spool_with_a_refused_record_never_stops_the_start(
    store_url: str, tmp_path: Path
) -> None:
    """Finding 1: the next start replayed the spool, failed on the bad record and exited,
    a crash loop under Kubernetes."""
    cfg = {
        "models": {"m": {"provider": "scripted"}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        "store": {"record_flush_interval_s": 0.05},
    }
    server = GuaritaServer(tmp_path, cfg, store_url=store_url)
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)

    def row(request_id: str, **changes: object) -> bytes:
        data: dict[str, object] = {
            "record_id": secrets.token_hex(16), "request_id": request_id,
            "created_at": datetime.now(UTC).isoformat(), "endpoint": "chat.completions",
            "model": "m", "status": "success", "status_code": 200, "latency_ms": 1.0,
        }  # fmt: skip
        data.update(changes)
        return orjson.dumps(data)

    lines = [row("spooled-1"), row("spooled-bad", model=None, agent="pii-like-value"),
             row("spooled-2")]  # fmt: skip
    (spool / "records-20260101T000000000000-1-abcdef.jsonl").write_bytes(b"\n".join(lines))
    server.start()
    worker = server.worker  # scale-out: a Celery worker on the same data directory
    try:

        def replayed() -> bool:
            return not list(spool.glob("*.jsonl"))

        wait_until(replayed, timeout=30, what="the spool to be replayed")
        if not scale_out():  # there the worker, on the same data directory, may replay it
            metrics = httpx.get(server.base_url + "/metrics").text
            match = re.search(r"^guarita_records_dead_lettered_total (\S+)$", metrics, re.M)
            assert match is not None and float(match.group(1)) == 1.0
        assert httpx.get(server.base_url + "/ready").status_code == 200
    finally:
        server.stop()
    stored = {r["request_id"] for r in await query(store_url, "SELECT request_id FROM requests")}
    assert {"spooled-1", "spooled-2"} <= stored and "spooled-bad" not in stored
    dead = (tmp_path / "data" / "dead-letter" / "records.jsonl").read_bytes().splitlines()
    assert [orjson.loads(d)["record"]["request_id"] for d in dead] == ["spooled-bad"]
    logs = server.logs() + (worker.output() if worker is not None else "")
    assert logs.count("record_dead_lettered") == 1  # replayed by one process only
    assert "pii-like-value" not in logs
