"""SIGTERM under load: every request the server answered is in the store afterwards.

Request records are written in batches off the hot path; this checks that the batching
never costs a record on a clean stop, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.helpers import GuaritaServer, query, wait_until

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
