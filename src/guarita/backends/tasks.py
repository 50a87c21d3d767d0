"""Task queues and the executor they share.

A queue only decides *where* a task runs: the embedded default runs tasks in an
in-process worker pool, scale-out mode in Celery workers (``backends/celery_tasks.py``).
The :class:`TaskExecutor` decides *how*: claim with a lease, renew it while working,
finish or fail conditionally on the claim, retry with backoff up to a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from guarita.aio import cancel_and_wait
from guarita.errors import GuaritaError, InvalidRequest, NotFound
from guarita.store.tasks import FINAL, RUNNING, TaskInfo, TaskStore

log = structlog.get_logger("guarita.tasks")

TaskRunner = Callable[[TaskInfo], Awaitable[dict[str, Any]]]
TaskListener = Callable[[str, TaskInfo, dict[str, Any]], None]
"""Told of each step: "task.started", "task.finished" or "task.failed", the task, details."""


class TaskQueue(Protocol):
    async def start(self) -> None: ...

    async def submit(self, task: TaskInfo, *, trace_context: dict[str, str] | None = None) -> None:
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


@dataclass(slots=True, frozen=True)
class Outcome:
    kind: Literal["done", "retry", "busy", "gone"]
    delay_s: float = 0.0


class TaskExecutor:
    def __init__(
        self,
        store: TaskStore,
        runner: TaskRunner,
        *,
        max_attempts: int = 3,
        max_deliveries: int = 10,
        retry_backoff_s: float = 1.0,
        lease_s: float = 60.0,
        listener: TaskListener | None = None,
    ) -> None:
        self._store = store
        self._runner = runner
        self._max_attempts = max_attempts
        self._max_deliveries = max(max_deliveries, max_attempts)
        self._backoff = retry_backoff_s
        self._lease = lease_s
        self._listener = listener

    def _tell(self, event: str, task: TaskInfo, **details: Any) -> None:
        if self._listener is not None:
            self._listener(event, task, details)

    async def execute(self, task_id: str) -> Outcome:
        """Run one delivery of a task; the outcome tells the queue what to do next."""
        task = await self._store.claim(task_id, lease_s=self._lease)
        if task is None:
            current = await self._store.get(task_id)
            if current is None or current.status in FINAL:
                return Outcome("gone")  # a duplicate delivery: already finished
            # another worker holds a live lease, or a race with a retry: look again later
            return Outcome("busy", self._lease / 2 if current.status == RUNNING else 1.0)
        if task.deliveries > self._max_deliveries:
            return await self._abandon(task)
        self._tell("task.started", task, attempt=task.attempt)
        renewer = asyncio.create_task(self._keep_lease(task))
        try:
            result = await self._runner(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the task
            return await self._failed(task, exc)
        finally:
            renewer.cancel()
        if await self._store.succeed(task, result):
            self._tell("task.finished", task, attempt=task.attempt)
        else:
            log.warning("task_claim_lost", task_id=task.id, attempt=task.attempt)
        return Outcome("done")

    async def _failed(self, task: TaskInfo, exc: Exception) -> Outcome:
        retry = is_retryable(exc) and task.attempt < self._max_attempts
        await self._store.fail(task, error_body(exc), retry=retry)
        log.warning(
            "task_failed", task_id=task.id, attempt=task.attempt, retry=retry, error=str(exc)
        )
        self._tell("task.failed", task, attempt=task.attempt, final=not retry, error=str(exc))
        if retry:
            return Outcome("retry", self._backoff * 2 ** (task.attempt - 1))
        return Outcome("done")

    async def _abandon(self, task: TaskInfo) -> Outcome:
        """A task whose workers keep dying mid-attempt (a crash, out of memory) is failed
        rather than delivered for ever; its last attempt never ran, so it is not counted."""
        message = (
            f"task abandoned: delivered {task.deliveries - 1} times, and each time its "
            "worker stopped before the attempt ended"
        )
        error = {"message": message, "type": "internal_error", "code": "task_abandoned"}
        await self._store.fail(task, error, retry=False, counted=False)
        log.error("task_abandoned", task_id=task.id, deliveries=task.deliveries - 1)
        self._tell("task.failed", task, attempt=task.attempt, final=True, error=message)
        return Outcome("done")

    async def _keep_lease(self, task: TaskInfo) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            if not await self._store.renew(task, lease_s=self._lease):
                return


TaskRun = Callable[[str, dict[str, str] | None], Awaitable[Outcome]]
"""Runs one delivery of a task, given its id and the submitter's trace context."""


class TaskSweeper:
    """Re-delivers tasks whose delivery was lost: running under an expired lease (their
    worker or process died) or queued for longer than ``stranded_after_s``. Delivering
    one twice is harmless, because claims are conditional; so every process may sweep."""

    def __init__(
        self,
        store: TaskStore,
        deliver: Callable[[str], Awaitable[None]],
        *,
        interval_s: float,
        stranded_after_s: float,
    ) -> None:
        self._store = store
        self._deliver = deliver
        self._interval = interval_s
        self._stranded_after = stranded_after_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="task-sweeper")

    async def sweep(self) -> int:
        stranded = await self._store.stranded_ids(queued_for_s=self._stranded_after)
        for task_id in stranded:
            await self._deliver(task_id)
        if stranded:
            log.info("tasks_redelivered", count=len(stranded))
        return len(stranded)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive store hiccups
                log.warning("task_sweep_failed", error=f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


class LocalTaskQueue:
    """The embedded default: a pool of asyncio workers in the API process (in each of them
    with ``serve --workers N``). Tasks left running by a stopped process are taken over when
    their lease expires, by the sweeper of whichever process is running then."""

    def __init__(
        self,
        store: TaskStore,
        run: TaskRun,
        *,
        workers: int = 2,
        sweep_interval_s: float = 30.0,
        stranded_after_s: float = 300.0,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        self._store = store
        self._run = run
        self._workers = workers
        self._grace = shutdown_grace_s
        self._queue: asyncio.Queue[tuple[str, dict[str, str] | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._sweeper = TaskSweeper(
            store, self._deliver, interval_s=sweep_interval_s, stranded_after_s=stranded_after_s
        )

    async def _deliver(self, task_id: str) -> None:
        self._queue.put_nowait((task_id, None))

    async def start(self) -> None:
        for task_id in await self._store.queued_ids():
            await self._deliver(task_id)
        if not self._queue.empty():
            log.info("tasks_resumed", queued=self._queue.qsize())
        self._tasks = [
            asyncio.create_task(self._work(), name=f"task-worker-{i}") for i in range(self._workers)
        ]
        self._sweeper.start()

    async def submit(self, task: TaskInfo, *, trace_context: dict[str, str] | None = None) -> None:
        self._queue.put_nowait((task.id, trace_context))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            self._busy += 1
            self._idle.clear()
            try:
                outcome = await self._run(*item)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()
            if outcome.kind in ("retry", "busy"):
                loop.call_later(outcome.delay_s, self._queue.put_nowait, item)

    async def aclose(self) -> None:
        """Let running tasks finish for a grace period; any cut short are taken over later."""
        await self._sweeper.aclose()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=self._grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
