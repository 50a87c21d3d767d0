"""Scale-out mode with real processes: two API processes and two Celery workers around
PostgreSQL, Redis and RabbitMQ. A worker is killed (SIGKILL) in the middle of tasks; every
accepted task must still end exactly once with its result, and every answered request
must be in PostgreSQL. Also: several API processes on one port report metrics summed
over all of them.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.helpers import (
    REDIS_URL,
    GuaritaServer,
    Leftovers,
    create_pg_database,
    drop_pg_database,
    query,
    scale_out_settings,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_store() -> Iterator[str]:
    name, url = create_pg_database()
    yield url
    drop_pg_database(name)


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def events_by_type(stream: str) -> dict[str, list[dict[str, Any]]]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        entries = client.xrange(stream)
    finally:
        client.close()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for _, fields in entries:
        event = orjson.loads(fields[b"event"])
        grouped.setdefault(event["type"], []).append(event)
    return grouped


def test_killed_worker_loses_no_task(pg_store: str, tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    stream = f"guarita-test-events-{tag}"
    config = {
        "models": {"m": {"provider": "scripted", "options": {"delay_s": 2, "reply": "done"}}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        **scale_out_settings(tag),
        "events": {"sink": "redis", "stream": stream},
    }
    config["tasks"].update({"lease_s": 3, "workers": 2, "max_attempts": 3})
    Leftovers.redis_prefixes.append(stream)  # the stream key is removed at the end too
    api_a = GuaritaServer(tmp_path / "a", config, store_url=pg_store)
    api_b = GuaritaServer(tmp_path / "b", config, store_url=pg_store)
    key = api_a.create_key("scale")
    api_a.start()
    api_b.start()  # each brings one worker
    try:
        assert api_a.worker is not None and api_b.worker is not None
        task_ids = []
        for i in range(8):
            api = api_a if i % 2 == 0 else api_b
            r = httpx.post(
                api.base_url + "/api/tasks", headers=auth(key), json={"message": f"job {i}"}
            )
            assert r.status_code == 202
            task_ids.append(r.json()["task_id"])

        def running() -> list[dict[str, Any]]:
            rows = asyncio.run(query(pg_store, "SELECT id FROM tasks WHERE status = 'running'"))
            return rows if len(rows) >= 3 else []

        wait_until(running, timeout=60, what="tasks running on both workers")
        api_a.worker.stop(signal.SIGKILL)  # mid-task, no chance to clean up

        # meanwhile both API processes serve the same conversation and direct calls
        answered = []
        first = httpx.post(
            api_a.base_url + "/api/chat", headers=auth(key), json={"message": "hello"}
        )
        session = first.json()["session_id"]
        second = httpx.post(
            api_b.base_url + "/api/chat",
            headers=auth(key),
            json={"message": "again", "session_id": session},
        )
        assert first.status_code == second.status_code == 200
        answered += [first.headers["x-request-id"], second.headers["x-request-id"]]
        turns = redis.Redis.from_url(REDIS_URL).llen(
            f"{config['redis_prefix']}session:{session}:turns"
        )
        assert turns == 4  # both processes wrote to the one shared session

        def all_done() -> list[dict[str, Any]] | None:
            results = [
                httpx.get(f"{api_b.base_url}/api/tasks/{t}", headers=auth(key)).json()
                for t in task_ids
            ]
            return results if all(r["status"] in ("succeeded", "failed") for r in results) else None

        results = wait_until(all_done, timeout=120, interval=0.5, what="every task to finish")
        assert [r["status"] for r in results] == ["succeeded"] * len(task_ids), results
        assert all(r["result"]["response"] == "done" for r in results)
        assert max(r["deliveries"] for r in results) >= 2, "the kill interrupted no task"
        assert all(r["attempts"] == 1 for r in results), "a killed attempt was counted"
    finally:
        api_a.stop()
        api_b.stop()

    grouped = wait_until(
        lambda: (
            (g := events_by_type(stream)) and len(g.get("guarita.task.finished", [])) >= 8 and g
        ),
        timeout=30,
        what="task.finished events",
    )
    finished = Counter(e["data"]["task_id"] for e in grouped["guarita.task.finished"])
    assert finished == Counter(dict.fromkeys(task_ids, 1)), "a task finished more than once"
    stored = {
        r["request_id"] for r in asyncio.run(query(pg_store, "SELECT request_id FROM requests"))
    }
    assert set(answered) <= stored
    for r in results:  # the model call of each task's successful attempt is recorded too
        assert f"{r['task_id']}-{r['attempts']}" in stored


def test_several_workers_store_each_task_record_once(pg_store: str, tmp_path: Path) -> None:
    """Finding 2: workers flushed concurrently and stored records two or three times."""
    tag = secrets.token_hex(4)
    config = {
        "models": {"m": {"provider": "scripted", "options": {"delay_s": 0.02, "reply": "ok"}}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        **scale_out_settings(tag),
    }
    config["tasks"].update({"workers": 3})
    server = GuaritaServer(tmp_path, config, store_url=pg_store)
    key = server.create_key("records")
    server.start()
    second = server.start_worker()
    try:
        # both workers up before the tasks go in, or the first can run them all alone
        wait_until(lambda: '"role":"worker"' in second.output(), timeout=60,
                   what="the second worker's start")  # fmt: skip
        with httpx.Client(base_url=server.base_url, headers=auth(key)) as client:
            ids = [
                client.post("/api/tasks", json={"message": f"job {i}"}).json()["task_id"]
                for i in range(60)
            ]

            def done() -> list[dict[str, Any]] | None:
                results = [client.get(f"/api/tasks/{t}").json() for t in ids]
                finished = all(r["status"] == "succeeded" for r in results)
                return results if finished else None

            results = wait_until(done, timeout=120, interval=0.3, what="60 tasks")
    finally:
        second.stop()
        server.stop()
    answered = {r["result"]["request_id"] for r in results}
    assert len(answered) == 60
    rows = asyncio.run(
        query(pg_store, "SELECT request_id, record_id FROM requests WHERE endpoint = 'task'")
    )
    assert len(rows) == 60, f"{len(rows)} rows for 60 model calls"
    assert {r["request_id"] for r in rows} == answered
    assert len({r["record_id"] for r in rows}) == 60


def test_several_api_processes_report_summed_metrics(tmp_path: Path) -> None:
    config = {
        "models": {"m": {"provider": "scripted"}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
    }
    server = GuaritaServer(tmp_path, config, workers=2)
    key = server.create_key("multi")
    server.start()
    try:
        pids: set[int] = set()
        sent = 0
        with httpx.Client(base_url=server.base_url, headers=auth(key)) as client:
            while len(pids) < 2 and sent < 400:  # until both processes have answered (bounded)
                r = client.post(
                    "/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                    headers={"connection": "close"},
                )
                assert r.status_code == 200
                sent += 1
                rid = r.headers["x-request-id"]
                line = wait_until(
                    lambda rid=rid: _log_line(server, rid), timeout=10, what="log line"
                )
                pids.add(orjson.loads(line)["pid"])
        assert len(pids) == 2, f"one process answered all {sent} requests"
        for _ in range(10):  # whichever process answers the scrape reports the sum over both
            text = httpx.get(server.base_url + "/metrics", headers={"connection": "close"}).text
            match = re.search(
                r'agent_requests_total\{agent_name="direct",status="success"\} (\S+)', text
            )
            assert match is not None
            assert float(match.group(1)) == sent
    finally:
        server.stop()


def test_tasks_over_a_redis_broker(pg_store: str, tmp_path: Path) -> None:
    """The same tasks with Redis as the Celery broker instead of RabbitMQ."""
    tag = secrets.token_hex(4)
    config = {
        "models": {"m": {"provider": "scripted", "options": {"reply": "via redis"}}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        **scale_out_settings(tag),
    }
    config["celery_broker_url"] = REDIS_URL
    server = GuaritaServer(tmp_path, config, store_url=pg_store)
    key = server.create_key("redis-broker")
    server.start()
    try:
        ids = [
            httpx.post(
                server.base_url + "/api/tasks", headers=auth(key), json={"message": f"job {i}"}
            ).json()["task_id"]
            for i in range(3)
        ]

        def done() -> list[dict[str, Any]] | None:
            results = [
                httpx.get(f"{server.base_url}/api/tasks/{t}", headers=auth(key)).json() for t in ids
            ]
            return results if all(r["status"] == "succeeded" for r in results) else None

        results = wait_until(done, timeout=60, interval=0.2, what="tasks over the Redis broker")
        assert [r["result"]["response"] for r in results] == ["via redis"] * 3
        assert server.worker is not None and "redis://" in server.worker.output()
    finally:
        server.stop()


def _log_line(server: GuaritaServer, request_id: str) -> str | None:
    for line in server.logs().splitlines():
        if request_id in line and '"event":"request"' in line:
            return line
    return None
