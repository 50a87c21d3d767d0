"""Task queues. The embedded default runs tasks in an in-process worker pool; the task
rows in the store make them durable: a task accepted before a restart is run after it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from guarita.errors import GuaritaError, InvalidRequest, NotFound
from guarita.store.tasks import TaskInfo, TaskStore

log = structlog.get_logger("guarita.tasks")

TaskRunner = Callable[[TaskInfo], Awaitable[dict[str, Any]]]


class TaskQueue(Protocol):
    async def start(self) -> None: ...

    async def submit(self, task: TaskInfo) -> None:
        """Hand a task (already written to the store) to the workers."""

    async def aclose(self) -> None: ...


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, GuaritaError):
        body: dict[str, Any] = exc.to_body()["error"]  # type: ignore[assignment]
        return body
    return {"message": f"{type(exc).__name__}: {exc}", "type": "internal_error", "code": None}


def is_retryable(exc: BaseException) -> bool:
    """Errors caused by the request itself are final; everything else may pass."""
    return not isinstance(exc, InvalidRequest | NotFound)


class LocalTaskQueue:
    def __init__(
        self,
        store: TaskStore,
        runner: TaskRunner,
        *,
        workers: int = 2,
        max_attempts: int = 3,
        retry_backoff_s: float = 1.0,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        self._store = store
        self._runner = runner
        self._workers = workers
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_s
        self._grace = shutdown_grace_s
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        requeued = await self._store.requeue_interrupted()
        for task_id in await self._store.queued_ids():
            self._queue.put_nowait(task_id)
        if requeued or not self._queue.empty():
            log.info("tasks_resumed", interrupted=requeued, queued=self._queue.qsize())
        self._tasks = [
            asyncio.create_task(self._work(), name=f"task-worker-{i}") for i in range(self._workers)
        ]

    async def submit(self, task: TaskInfo) -> None:
        self._queue.put_nowait(task.id)

    async def _work(self) -> None:
        while True:
            task_id = await self._queue.get()
            task = await self._store.claim(task_id)
            if task is None:
                continue
            self._busy += 1
            self._idle.clear()
            try:
                await self._run(task)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

    async def _run(self, task: TaskInfo) -> None:
        try:
            result = await self._runner(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the task
            retry = is_retryable(exc) and task.attempts < self._max_attempts
            await self._store.fail(task.id, error_body(exc), retry=retry)
            log.warning(
                "task_failed", task_id=task.id, attempt=task.attempts, retry=retry, error=str(exc)
            )
            if retry:
                delay = self._backoff * 2 ** (task.attempts - 1)
                asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, task.id)
            return
        await self._store.succeed(task.id, result)

    async def aclose(self) -> None:
        """Let running tasks finish for a grace period; any cut short resume at next start."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=self._grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
