"""``guarita worker``: a Celery worker process running agent tasks (scale-out mode).

Each worker process runs one asyncio event loop in a thread, shared by the Celery pool's
threads, and one :class:`~guarita.runtime.Runtime` on it. This module sits above both the
runtime and ``backends/celery_tasks.py`` (which carries task ids), so neither imports the
other.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from guarita.backends.celery_tasks import make_celery
from guarita.backends.tasks import Outcome
from guarita.runtime import Runtime
from guarita.settings import Settings


class WorkerContext:
    """A worker process's runtime and its event loop, running in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="guarita-loop", daemon=True
        )
        self._thread.start()
        self.runtime = Runtime(settings, role="worker")
        self._call(self.runtime.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def execute(self, task_id: str, trace_context: dict[str, str] | None) -> Outcome:
        outcome: Outcome = self._call(self.runtime.execute_task(task_id, trace_context))
        return outcome

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
