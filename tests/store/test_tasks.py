"""Task attempts count attempts that ended, not deliveries: a worker killed mid-attempt
costs the task nothing, and a task that keeps killing its workers is still stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from guarita.backends.tasks import TaskExecutor
from guarita.errors import UpstreamError
from guarita.store.database import Database
from guarita.store.tasks import FAILED, QUEUED, RUNNING, SUCCEEDED, TaskInfo, TaskStore


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[TaskStore]:
    db = Database(store_url)
    await db.migrate()
    yield TaskStore(db)
    await db.aclose()


async def killed_delivery(store: TaskStore, task_id: str) -> TaskInfo:
    """A worker claims the task and dies: its lease runs out, nothing is recorded."""
    claimed = await store.claim(task_id, lease_s=0.001)
    assert claimed is not None
    await asyncio.sleep(0.01)  # past the lease, so the next claim may take over
    return claimed


async def test_killed_attempts_are_not_counted(store: TaskStore) -> None:
    task = await store.create(agent="a", payload={}, key_id=None, request_id=None)
    outcomes: list[str] = []

    async def failing(_task: TaskInfo) -> dict[str, Any]:
        outcomes.append("failed")
        raise UpstreamError("model 'm': the upstream failed")

    executor = TaskExecutor(store, failing, max_attempts=3, retry_backoff_s=0)
    await killed_delivery(store, task.id)
    await killed_delivery(store, task.id)
    outcome = await executor.execute(task.id)  # killed twice, then one attempt fails
    current = await store.get(task.id)
    assert current is not None
    assert outcome.kind == "retry" and current.status == QUEUED
    assert current.attempts == 1 and current.deliveries == 3
    for _ in range(2):
        await executor.execute(task.id)
    current = await store.get(task.id)
    assert current is not None and current.status == FAILED
    assert current.attempts == 3 == len(outcomes)  # never more than max_attempts


async def test_a_task_killed_mid_attempt_then_succeeding_reports_one_attempt(
    store: TaskStore,
) -> None:
    task = await store.create(agent="a", payload={}, key_id=None, request_id=None)
    seen: list[int] = []

    async def ok(claimed: TaskInfo) -> dict[str, Any]:
        seen.append(claimed.attempt)
        return {"response": "done"}

    await killed_delivery(store, task.id)
    await TaskExecutor(store, ok).execute(task.id)
    current = await store.get(task.id)
    assert current is not None and current.status == SUCCEEDED
    assert (current.attempts, current.deliveries, seen) == (1, 2, [1])


async def test_a_task_that_keeps_killing_its_workers_is_abandoned(store: TaskStore) -> None:
    task = await store.create(agent="a", payload={}, key_id=None, request_id=None)
    ran: list[str] = []

    async def never(_task: TaskInfo) -> dict[str, Any]:
        ran.append("ran")
        return {}

    for _ in range(3):
        await killed_delivery(store, task.id)
    executor = TaskExecutor(store, never, max_attempts=3, max_deliveries=3)
    assert (await executor.execute(task.id)).kind == "done"
    current = await store.get(task.id)
    assert current is not None and current.status == FAILED and not ran
    assert current.error is not None and current.error["code"] == "task_abandoned"
    assert current.attempts == 0 and current.deliveries == 4


async def test_a_live_claim_is_not_taken_over(store: TaskStore) -> None:
    task = await store.create(agent="a", payload={}, key_id=None, request_id=None)
    assert await store.claim(task.id, lease_s=60) is not None
    assert await store.claim(task.id, lease_s=60) is None
    current = await store.get(task.id)
    assert current is not None and current.status == RUNNING and current.deliveries == 1
