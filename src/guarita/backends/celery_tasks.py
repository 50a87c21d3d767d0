"""Scale-out tasks: Celery carries task ids from API processes to worker processes.

Delivery is at least once: messages are acknowledged only after the task ran
(``acks_late``), a worker lost mid-task gets its message requeued
(``reject_on_worker_lost``; with a Redis broker, after ``visibility_timeout``), and the
store's claim/lease protocol (``store/tasks.py``) makes a redelivered or duplicated
message harmless: a task is finished once. Each worker process runs one asyncio loop in
a thread, shared by the pool's threads, and one :class:`~guarita.runtime.Runtime`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import structlog

from guarita.backends.tasks import TaskSweeper
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
    worker: WorkerContext = self.app.guarita_worker
    outcome = worker.execute(task_id, trace_context)
    if outcome.kind in ("retry", "busy"):
        raise self.retry(countdown=outcome.delay_s)
    return str(outcome.kind)


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


class WorkerContext:
    """A worker process's runtime and its event loop, running in a background thread."""

    def __init__(self, settings: Settings) -> None:
        from guarita.runtime import Runtime

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="guarita-loop", daemon=True
        )
        self._thread.start()
        self.runtime = Runtime(settings, role="worker")
        self._call(self.runtime.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def execute(self, task_id: str, trace_context: dict[str, str] | None) -> Any:
        return self._call(self.runtime.execute_task(task_id, trace_context))

    def close(self) -> None:
        self._call(self.runtime.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def run_worker(
    settings: Settings,
    *,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    metrics_port: int | None = None,
) -> None:
    """``guarita worker``: a Celery worker (thread pool) running agent tasks; with
    ``metrics_port``, its Prometheus metrics on that port (also a liveness probe)."""
    app = make_celery(settings)
    app.guarita_worker = WorkerContext(settings)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, registry=app.guarita_worker.runtime.metrics.registry)
    try:
        app.worker_main([
            "worker", "--pool=threads", f"--concurrency={concurrency or settings.tasks.workers}",
            f"--loglevel={loglevel}", "-Q", settings.tasks.queue, "-n", f"guarita-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ])  # fmt: skip
    finally:
        app.guarita_worker.close()
