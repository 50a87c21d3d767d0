"""Scale-out tasks: Celery carries task ids from API processes to worker processes.

Delivery is at least once: messages are acknowledged only after the task ran
(``acks_late``), a worker lost mid-task gets its message requeued
(``reject_on_worker_lost``; with a Redis broker, after ``visibility_timeout``), and the
store's claim/lease protocol (``store/tasks.py``) makes a redelivered or duplicated
message harmless: a task is finished once. The worker process itself (its runtime and
event loop) is ``guarita/worker.py``; this module knows nothing of the runtime, so the
runtime can use it without an import cycle.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from guarita.backends.tasks import Outcome, TaskSweeper
from guarita.providers.base import missing_extra
from guarita.settings import Settings
from guarita.store.tasks import TaskInfo, TaskStore

log = structlog.get_logger("guarita.celery")

TASK_NAME = "guarita.run_task"


def make_celery(settings: Settings) -> Any:
    try:
        from celery import Celery
    except ImportError as exc:
        raise missing_extra("celery", "scale") from exc
    broker = settings.celery_broker_url or settings.redis_url
    app = Celery("guarita", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.tasks.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_transport_options={"visibility_timeout": settings.tasks.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True)(_run_task)
    return app


def _run_task(self: Any, task_id: str, trace_context: dict[str, str] | None = None) -> str:
    worker: TaskWorker = self.app.guarita_worker
    outcome = worker.execute(task_id, trace_context)
    if outcome.kind in ("retry", "busy"):
        raise self.retry(countdown=outcome.delay_s)
    return str(outcome.kind)


class TaskWorker(Protocol):
    """What a worker process offers the Celery task (``guarita.worker.WorkerContext``)."""

    def execute(self, task_id: str, trace_context: dict[str, str] | None) -> Outcome: ...


class CeleryTaskQueue:
    """The API side: send task ids to the broker; the sweeper re-sends lost ones."""

    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self._app = make_celery(settings)
        self._store = store
        self._settings = settings.tasks
        self._sweeper = TaskSweeper(
            store,
            self._deliver,
            interval_s=settings.tasks.sweep_interval_s,
            stranded_after_s=settings.tasks.stranded_after_s,
        )

    async def start(self) -> None:
        self._sweeper.start()

    async def submit(self, task: TaskInfo, *, trace_context: dict[str, str] | None = None) -> None:
        try:
            await asyncio.to_thread(self._send, task.id, trace_context)
        except Exception as exc:  # noqa: BLE001 - the task is durable; the sweeper re-sends it
            log.warning("task_send_failed", task_id=task.id, error=f"{type(exc).__name__}: {exc}")

    def _send(self, task_id: str, trace_context: dict[str, str] | None) -> None:
        self._app.send_task(
            TASK_NAME,
            args=[task_id],
            kwargs={"trace_context": trace_context},
            queue=self._settings.queue,
        )

    async def _deliver(self, task_id: str) -> None:
        await asyncio.to_thread(self._send, task_id, None)

    async def aclose(self) -> None:
        await self._sweeper.aclose()
