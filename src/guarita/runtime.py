"""The composition root: one object that owns every component and their lifecycle.

The HTTP layer, the CLI and the task workers all receive a ``Runtime``; no component
finds another by import, and nothing is built at import time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from guarita.agents import AgentService
from guarita.auth import Authenticator
from guarita.backends.tasks import LocalTaskQueue, TaskQueue
from guarita.errors import ModelNotFound
from guarita.pipeline import Next, compose
from guarita.pipeline.account import Accounting
from guarita.pipeline.provider_call import ProviderCall
from guarita.pipeline.record import Recording
from guarita.providers.base import Embeddings, Provider, ProviderRegistry
from guarita.settings import Settings
from guarita.store.database import Database
from guarita.store.keys import KeyStore
from guarita.store.records import RecordWriter
from guarita.store.sessions import SessionStore
from guarita.store.tasks import TaskStore
from guarita.telemetry.metrics import Metrics
from guarita.telemetry.prices import Price, price_for
from guarita.types import Call, Reply

log = structlog.get_logger("guarita.runtime")


class Runtime:
    def __init__(self, settings: Settings, *, registry: ProviderRegistry | None = None) -> None:
        self.settings = settings
        self.db = Database(settings.store_url)
        self.metrics = Metrics()
        self.keys = KeyStore(self.db, cache_ttl_s=settings.auth.key_cache_ttl_s)
        self.auth = Authenticator(self.keys, settings.auth)
        self.records = RecordWriter(
            self.db,
            spool_dir=settings.data_dir / "spool",
            batch_size=settings.store.record_batch_size,
            flush_interval_s=settings.store.record_flush_interval_s,
        )
        self.sessions = SessionStore(self.db)
        self.task_store = TaskStore(self.db)
        registry = registry or ProviderRegistry()
        # Building providers reads their keys: a missing one stops the start here.
        self.providers: dict[str, Provider] = {
            name: registry.create(name, model) for name, model in settings.models.items()
        }
        self.prices: dict[str, Price] = {
            name: price_for(name, m) for name, m in settings.models.items()
        }
        self.recording = Recording(self.metrics, self.records)
        self.pipeline: Next = compose(
            [self.recording, Accounting(self.prices)], ProviderCall(self.providers)
        )
        self.agents = AgentService(settings, self.sessions, self.pipeline)
        self.tasks: TaskQueue = LocalTaskQueue(
            self.task_store,
            self.agents.run_task,
            workers=settings.tasks.workers,
            max_attempts=settings.tasks.max_attempts,
            retry_backoff_s=settings.tasks.retry_backoff_s,
        )

    @property
    def default_model(self) -> str:
        agent = self.settings.agents.get(self.settings.default_agent)
        return agent.model if agent else next(iter(self.settings.models))

    async def start(self) -> None:
        if self.settings.store.auto_migrate:
            await self.db.migrate()
        await self.records.start()
        for provider in self.providers.values():
            await provider.start()
        await self.tasks.start()
        log.info(
            "runtime_started",
            store=self.db.engine.url.render_as_string(hide_password=True),
            models=sorted(self.providers),
        )

    async def embed(self, call: Call, inputs: list[str]) -> Embeddings:
        """Embeddings do not go through the chat pipeline, but are costed and recorded alike."""
        provider = self.providers.get(call.model)
        if provider is None:
            raise ModelNotFound(f"model {call.model!r} does not exist", param="model")
        self.recording.begin()
        try:
            result = await provider.embed(inputs)
        except BaseException as exc:
            self.recording.finish(call, None, exc)
            raise
        reply = Reply(model=result.model, provider=provider.name, usage=result.usage, finished=True)
        reply.cost_usd = self.prices[call.model].cost(result.usage)
        self.recording.finish(call, reply, None)
        return result

    async def readiness(self) -> dict[str, Any]:
        store_ok = await self.db.ping()
        model = self.default_model
        provider = self.providers.get(model)
        model_ok = await provider.ready() if provider is not None else False
        return {
            "ready": store_ok and model_ok,
            "checks": {"store": store_ok, f"model:{model}": model_ok},
        }

    async def aclose(self) -> None:
        await self.tasks.aclose()
        await self.records.aclose()
        await asyncio.gather(*(p.aclose() for p in self.providers.values()))
        await self.db.aclose()
        log.info("runtime_stopped", records_written=self.records.written)
