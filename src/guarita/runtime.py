"""The composition root: one object that owns every component and their lifecycle.

The HTTP layer, the CLI and the task workers all receive a ``Runtime``; no component
finds another by import, and nothing is built at import time. Backends are chosen here,
from settings alone: SQLite or PostgreSQL by ``store.url``, in-process or Redis state by
``redis_url``, in-process or Celery tasks by ``task_queue``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any, Literal

import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter

from guarita.agents import AgentService
from guarita.auth import Authenticator
from guarita.backends import redis as redis_backend
from guarita.backends.tasks import LocalTaskQueue, Outcome, TaskExecutor, TaskQueue, TaskRunner
from guarita.batches.lines import LineRunner
from guarita.batches.runner import BatchRunner
from guarita.cache.exact import Entries, LocalEntries, SharedEntries
from guarita.errors import ConfigError
from guarita.ops.consistency import ConsistencyStage
from guarita.ops.prompts import PromptRegistry
from guarita.ops.rollout_evaluator import RolloutEvaluator
from guarita.ops.rollout_samples import SampleRecorder
from guarita.ops.rollouts import RolloutService
from guarita.ops.scorers import Scoring, ScoringStage
from guarita.ops.shadow import ShadowRunner
from guarita.pipeline import Next, Stage, compose
from guarita.pipeline.account import Accounting
from guarita.pipeline.cache import ResponseCache
from guarita.pipeline.guard import Guards, InputGuard, OutputGuard
from guarita.pipeline.provider_call import ProviderCall
from guarita.pipeline.record import Recording
from guarita.providers.base import ProviderRegistry
from guarita.resilience.breaker import SharedBreakerStore
from guarita.resilience.build import build_groups
from guarita.resilience.fallback import FallbackChain
from guarita.resilience.group import ModelGroup
from guarita.settings import Settings
from guarita.state import SharedState
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState
from guarita.store.batches import BatchInfo, BatchStore, FileStore
from guarita.store.database import Database
from guarita.store.keys import KeyStore, RevocationWatch
from guarita.store.prompts import PromptStore
from guarita.store.records import RecordWriter
from guarita.store.rollouts import PairWriter, RolloutStore, SampleWriter
from guarita.store.sessions import SessionStore, SqlSessionStore
from guarita.store.tasks import TaskInfo, TaskStore
from guarita.telemetry import events
from guarita.telemetry.audit import AuditLog, settings_digest
from guarita.telemetry.metrics import Metrics
from guarita.telemetry.prices import Price, price_for
from guarita.telemetry.tracing import Tracing
from guarita.traffic.alerts import BudgetAlerts
from guarita.traffic.complexity import ComplexityRouting
from guarita.traffic.compression import PromptCompression
from guarita.traffic.economy import EconomyMode

if TYPE_CHECKING:  # the semantic tier's modules need its extra (numpy, the embedder)
    from guarita.cache.embedder import Embedder
    from guarita.cache.semantic import SemanticTier
    from guarita.ops.drift import DriftReport
    from guarita.ops.drift_service import DriftService
from guarita.traffic.ratelimit import RateLimits

log = structlog.get_logger("guarita.runtime")

Role = Literal["api", "worker"]


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: ProviderRegistry | None = None,
        role: Role = "api",
        span_exporter: SpanExporter | None = None,
    ) -> None:
        self.settings = settings
        self.role = role
        self.db = Database(settings.store_url)
        self.metrics = Metrics()
        self.tracing = Tracing(settings.tracing, exporter=span_exporter)
        self.redis: Any = redis_backend.connect(settings.redis_url) if settings.redis_url else None
        self.events = events.make_publisher(
            settings.events, settings.redis_url, on_drop=self.metrics.events_dropped.inc
        )
        self.keys = KeyStore(self.db, cache_ttl_s=settings.auth.key_cache_ttl_s)
        # JWTs are verified by API processes only (a missing secret stops their start)
        self.auth = Authenticator(self.keys, settings.auth, tiers=frozenset(settings.limits.tiers),
                                  jwt=role == "api")  # fmt: skip
        self.records = RecordWriter(
            self.db,
            spool_dir=settings.data_dir / "spool",
            dead_letter_dir=settings.data_dir / "dead-letter",
            batch_size=settings.store.record_batch_size,
            flush_interval_s=settings.store.record_flush_interval_s,
            max_pending=settings.store.record_queue_max,
            on_dead_letter=self.metrics.records_dead_lettered.inc,
        )
        self.audit = AuditLog(
            self.db,
            spool_dir=settings.data_dir / "audit-spool",
            dead_letter_dir=settings.data_dir / "dead-letter",
            enabled=settings.audit.enabled,
            batch_size=settings.audit.batch_size,
            flush_interval_s=settings.audit.flush_interval_s,
            on_entry=lambda category, outcome: self.metrics.child(
                self.metrics.audit_entries, category, outcome
            ).inc(),
            on_dead_letter=self.metrics.audit_dead_lettered.inc,
        )
        self.sessions = self._session_store()
        self.task_store = TaskStore(self.db)
        self.state: SharedState = (
            RedisSharedState(self.redis, prefix=settings.redis_prefix)
            if self.redis is not None
            else MemorySharedState()
        )
        self.revocations = RevocationWatch(
            self.keys, interval_s=settings.auth.revocation_check_s, broadcast=self.state
        )
        self.breakers = SharedBreakerStore(self.state)
        # quality: scorers (runtime.scoring), the live scoring and consistency stages
        self.scoring = Scoring(settings)
        scoring_stages = self._quality_stages()
        # Building providers reads their keys: a missing one stops the start here.
        self.models: dict[str, ModelGroup] = build_groups(
            settings, registry or ProviderRegistry(), self.breakers, self.metrics,
            scorer=self.scoring.resilience_scorer(),
        )  # fmt: skip
        self.prices: dict[str, Price] = {
            name: price_for(name, m) for name, m in settings.models.items()
        }
        budgets = settings.limits.budgets
        alerts = BudgetAlerts(
            self.state,
            thresholds=budgets.alert_thresholds,
            publish=self.events.publish,
            count=lambda budget, share: self.metrics.budget_alerts.labels(budget, share).inc(),
            webhook_url=budgets.webhook_url,
        )
        self.economy = EconomyMode(
            settings.limits.economy,
            self.state,
            on_call=lambda scope: self.metrics.economy_calls.labels(scope.split(":")[0]).inc(),
        )
        self.rate_limits = RateLimits(
            self.state,
            settings.limits,
            max_deadline_s=settings.resilience.max_deadline_s,
            prices=self.prices,
            alerts=alerts,
            economy=self.economy,
        )
        # error budgets (docs/slo.md): the evaluation, the deploy freeze, the event counter
        from guarita.ops import slo_service

        self.slo, count_slo_events = slo_service.build(
            settings, self.db, self.metrics, audit=self.audit.record, publish=self.events.publish
        )
        self.freeze = self.slo.freeze
        self.recording = Recording(
            self.metrics, self.records, self.events, on_record=count_slo_events
        )
        tracer = self.tracing.tracer if self.tracing.enabled else None
        compression = PromptCompression(
            {n: a.compression for n, a in settings.agents.items() if a.compression is not None},
            on_saved=lambda agent, tokens: self.metrics.tokens_saved.labels(agent).inc(tokens),
        )
        routing = ComplexityRouting(
            {n: a.routing for n, a in settings.agents.items() if a.routing is not None}
        )
        self.cache = self._response_cache()
        self.guards = Guards(settings)  # the detectors load here, when a policy uses them

        def count_verdict(guard: str, action: str, agent: str) -> None:
            self.metrics.guard_verdicts.labels(guard, action, agent).inc()

        self.input_guard = InputGuard(self.guards, on_verdict=count_verdict)
        output_guard = OutputGuard(self.guards, on_verdict=count_verdict)
        fallback = FallbackChain(
            settings.models,
            {name: agent.fallbacks for name, agent in settings.agents.items()},
            rules=settings.resilience.rules,
            static_reply=settings.resilience.static_reply,
            cached=self.cache.fallback_answer if self.cache.enabled else None,
        )
        stages: list[Stage] = [
            self.recording, *self._step_stages(), *self._behaviour_stages(), *scoring_stages,
            self.input_guard,
            compression, routing, self.rate_limits,
        ]  # fmt: skip
        if self.cache.enabled:
            stages.append(self.cache)
        stages.append(Accounting(self.prices))
        if self.guards.output_on:
            stages.append(output_guard)
        self.pipeline: Next = compose(
            [*stages, fallback],
            ProviderCall(self.models, tracer=tracer),
            tracer=tracer,
        )
        # the prompt registry: label moves announced on the shared state
        self.prompts = PromptRegistry(
            PromptStore(self.db), models=settings.models, broadcast=self.state,
            audit=self.audit.record, publish=self.events.publish,
        )  # fmt: skip
        self.scoring.bind(self.pipeline)
        self._rollouts()
        # urgent drift of an agent's answers rolls its canary back, and (like a used-up error
        # budget) a completed change still in its monitoring window
        if self.drift is not None:
            self.drift.evaluator.on_urgent(self.rollout_evaluator.on_drift)
        self.freeze.on_exhausted(self.rollout_evaluator.on_budget_exhausted)
        self.agents = AgentService(
            settings,
            self.sessions,
            self.pipeline,
            tracer=self.tracing.tracer,
            deadline=self.deadline,
            prompts=self.prompts,
            rollouts=self.rollouts,
            samples=self.rollout_samples.observe,
            mirror=self.shadow.mirror_live,
        )
        self.files = FileStore(self.db)
        self.batches = BatchStore(self.db)
        self.batch_runner = BatchRunner(
            self.batches,
            self.files,
            self.keys,
            LineRunner(
                settings, self.pipeline, self.deadline, max_wait_s=settings.batches.max_retry_wait_s
            ),
            settings.batches,
            on_line=lambda endpoint, ok: self.metrics.batch_lines.labels(
                endpoint, "succeeded" if ok else "failed"
            ).inc(),
            on_end=self._on_batch_end,
        )
        self._runners: dict[str, TaskRunner] = {
            "agent": self.agents.run_task,
            "batch": self.batch_runner.run,
        }
        self._background: set[asyncio.Task[None]] = set()
        self.executor = TaskExecutor(
            self.task_store,
            self._run_task,
            max_attempts=settings.tasks.max_attempts,
            max_deliveries=settings.tasks.max_deliveries,
            retry_backoff_s=settings.tasks.retry_backoff_s,
            lease_s=settings.tasks.lease_s,
            listener=self._on_task_event,
        )
        self.tasks: TaskQueue = self._task_queue()

    def _rollouts(self) -> None:
        """Rollouts (docs/rollouts.md): the service, its samples' recorder, the shadow
        runner (which calls back into the agent service) and the evaluator."""
        s, m = self.settings, self.metrics
        writer_options: dict[str, Any] = {
            "spool_dir": s.data_dir / "rollout-spool",
            "dead_letter_dir": s.data_dir / "dead-letter",
            "flush_interval_s": s.store.record_flush_interval_s,
        }
        self.rollouts = RolloutService(
            s, RolloutStore(self.db), prompts=self.prompts, broadcast=self.state, metrics=m,
            audit=self.audit.record, publish=self.events.publish, freeze=self.freeze.check,
        )  # fmt: skip
        self.rollout_samples = SampleRecorder(
            SampleWriter(self.db, **writer_options),
            relevance=self.scoring.relevance if s.rollouts.relevance else None,
            queue_size=s.rollouts.sample_queue_size,
            on_drop=lambda agent: m.child(m.rollout_samples_dropped, agent).inc(),
        )
        self.shadow = ShadowRunner(
            lambda job, ref, model, endpoint: self.agents.mirror(job, ref, model, endpoint),
            PairWriter(self.db, **writer_options), self.scoring.similarity, s.rollouts.shadow,
            on_outcome=lambda agent, outcome: m.child(m.shadow_runs, agent, outcome).inc(),
        )  # fmt: skip
        self.rollout_evaluator = RolloutEvaluator(
            self.rollouts, s.rollouts, pending=[self.rollout_samples]
        )

    # -- the reasoning log (docs/observability.md) -----------------------------------------
    def _step_stages(self) -> list[Stage]:
        """Reasoning and tool steps of chat calls into ``request_steps``; the purge."""
        from guarita.ops.steps_retention import StepRetention
        from guarita.pipeline.steps import StepCapture
        from guarita.store.steps import StepWriter

        s, data = self.settings.steps, self.settings.data_dir
        self.steps = StepWriter(self.db, spool_dir=data / "steps-spool",
                                dead_letter_dir=data / "dead-letter")  # fmt: skip
        self.step_retention = StepRetention(self.db, s)
        return [StepCapture(s, self.steps)] if s.enabled else []

    # -- AI behaviour and drift (docs/observability.md) ------------------------------------
    def _behaviour_stages(self) -> list[Stage]:
        """Behaviour metrics on every chat answer; drift sampling of the watched agents."""
        from guarita.pipeline.behaviour import Behaviour

        self.drift = self._drift_service()
        stages: list[Stage] = [Behaviour(self.metrics)]
        if self.drift is not None:
            stages.append(self.drift.sampling)
        return stages

    def _drift_service(self) -> DriftService | None:
        s = self.settings.drift
        if not s.enabled:
            return None
        from guarita.ops.drift_service import DriftService
        from guarita.store.drift import DriftStore

        agents = s.agents if s.agents is not None else list(self.settings.agents)
        unknown = sorted(set(agents) - set(self.settings.agents))
        if unknown:
            raise ConfigError(f"drift.agents: unknown agent {unknown[0]!r}")
        m = self.metrics

        def result(agent: str, kind: str, report: DriftReport) -> None:
            m.drift_score.labels(agent, kind).set(report.score)
            m.drift_level.labels(agent, kind).set(int(report.level))

        return DriftService(
            s, DriftStore(self.db), agents, embedder=self.scoring.similarity.embedder,
            turns=self.state, publish=self.events.publish, audit=self.audit.record,
            on_result=result, on_drop=m.drift_samples_dropped.inc,
        )  # fmt: skip

    # -- quality ---------------------------------------------------------------------------
    def _quality_stages(self) -> list[Stage]:
        """Consistency trials and live scoring (docs/quality.md), when an agent uses them."""
        m, agents = self.metrics, self.settings.agents.values()
        stages: list[Stage] = []

        def checked(agent: str, _score: float, low: bool) -> None:
            m.child(m.consistency_checks, agent, "low" if low else "ok").inc()

        if any(a.consistency is not None for a in agents):
            stages.append(
                ConsistencyStage(self.settings, self.scoring.similarity, on_score=checked)
            )
        if any(a.quality is not None for a in agents):
            stages.append(ScoringStage(self.scoring))
        return stages

    def _response_cache(self) -> ResponseCache:
        """The cache stage: entries in this process (LRU), or in Redis for every process."""
        s = self.settings
        entries: Entries
        if self.redis is not None:
            entries = SharedEntries(self.state)
        else:
            entries = LocalEntries(max_entries=s.cache.max_entries, max_bytes=s.cache.max_bytes)
        models = {n: m.cache for n, m in s.models.items() if m.cache is not None}
        agents = {n: a.cache for n, a in s.agents.items() if a.cache is not None}
        policies = [*models.values(), *agents.values()]
        semantic = self._semantic_tier() if any(p.mode == "semantic" for p in policies) else None
        return ResponseCache(
            models=models,
            agents=agents,
            entries=entries,
            semantic=semantic,
            prices=self.prices,
            stale_s=s.cache.stale_s,
            max_entry_bytes=s.cache.max_entry_bytes,
            economy_ttl_factor=s.limits.economy.cache_ttl_factor,
            on_lookup=lambda result: self.metrics.child(self.metrics.cache_lookups, result).inc(),
            on_saved=self.metrics.cache_saved.inc,
        )

    def _semantic_tier(self) -> SemanticTier:
        """The embedder (behind the embedding cache), the vector index and, in scale-out
        mode, the index shared through Redis."""
        from guarita.cache.embedder import CachedEmbedder, EndpointEmbedder, WordLlamaEmbedder
        from guarita.cache.index import VectorIndex
        from guarita.cache.semantic import WORDLLAMA_THRESHOLD, SemanticTier

        s = self.settings.cache.semantic
        inner: Embedder
        if s.embedder == "wordllama":
            inner = WordLlamaEmbedder()
            threshold = s.threshold or WORDLLAMA_THRESHOLD
        else:
            inner = EndpointEmbedder(base_url=s.embedder.base_url, model=s.embedder.model,
                                     api_key_env=s.embedder.api_key_env)  # fmt: skip
            assert s.threshold is not None  # the settings require it
            threshold = s.threshold
        judge = None
        if s.judge_mode == "model":
            from guarita.cache.judge import PairJudge

            assert isinstance(inner, WordLlamaEmbedder)  # the settings require it
            judge = PairJudge(inner.embed_now, threshold=s.judge_threshold)
        shared = self.state if self.redis is not None else None
        embedder = CachedEmbedder(inner, max_entries=s.embedding_cache_entries, shared=shared)
        dims = inner.dims or 0
        return SemanticTier(
            judge=judge,
            embedder=embedder,
            index=VectorIndex(dims, max_entries=s.max_entries),
            threshold=threshold,
            candidates=s.candidates,
            max_question_chars=s.max_question_chars,
            state=shared,
        )

    def _session_store(self) -> SessionStore:
        if self.redis is not None:
            from guarita.backends.sessions import RedisSessionStore

            s = self.settings
            return RedisSessionStore(self.redis, prefix=s.redis_prefix, ttl_s=s.sessions.ttl_s,
                                     max_turns=s.sessions.max_turns)  # fmt: skip
        return SqlSessionStore(self.db, max_loaded=self.settings.sessions.max_turns)

    def _task_queue(self) -> TaskQueue:
        if self.settings.task_queue == "celery":
            from guarita.backends.celery_tasks import CeleryTaskQueue

            return CeleryTaskQueue(self.settings, self.task_store)
        tasks = self.settings.tasks
        return LocalTaskQueue(
            self.task_store,
            self.execute_task,
            workers=tasks.workers,
            sweep_interval_s=tasks.sweep_interval_s,
            stranded_after_s=tasks.stranded_after_s,
        )

    async def _run_task(self, task: TaskInfo) -> dict[str, Any]:
        """A task's run, by its kind: an agent chat, or a batch."""
        return await self._runners[task.kind](task)

    def _on_task_event(self, event: str, task: TaskInfo, details: dict[str, Any]) -> None:
        status = event.removeprefix("task.")
        if event == "task.failed" and not details.get("final"):
            status = "retrying"
        elif event == "task.failed" and task.kind == "batch":
            message = f"the batch's task failed: {details.get('error')}"
            self._in_background(self.batch_runner.abandon(task.payload["batch_id"], message))
        self.metrics.tasks.labels(task.agent or task.kind, status).inc()
        self.events.publish(
            "guarita." + event, {"task_id": task.id, "agent": task.agent, **details}
        )

    def _in_background(self, work: Any) -> None:
        job = asyncio.get_running_loop().create_task(work)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    def _on_batch_end(self, batch: BatchInfo) -> None:
        self.metrics.batches.labels(batch.status).inc()
        self.events.publish(events.BATCH_ENDED, {
            "batch_id": batch.id, "status": batch.status, "endpoint": batch.endpoint,
            "total": batch.total, "completed": batch.completed, "failed": batch.failed,
        })  # fmt: skip

    def deadline(self, model: str, agent: str | None, requested_ms: float | None = None) -> float:
        """When a call must be over: the request's own wish within limits, else the agent's,
        the model's or the default deadline."""
        limits = self.settings.resilience
        if requested_ms is not None:
            seconds = min(max(requested_ms / 1000, limits.min_deadline_s), limits.max_deadline_s)
        else:
            agent_settings = self.settings.agents.get(agent or "")
            seconds = (
                (agent_settings.deadline_s if agent_settings else None)
                or self.settings.models[model].deadline_s
                or limits.deadline_s
            )
        return time.monotonic() + seconds

    @property
    def default_model(self) -> str:
        agent = self.settings.agents.get(self.settings.default_agent)
        return agent.model if agent else next(iter(self.settings.models))

    async def start(self) -> None:
        if self.settings.store.auto_migrate:
            await self.db.migrate()
        await self.records.start()
        await self.steps.start()
        await self.audit.start()
        self._audit_settings_loaded()
        await self.events.start()
        await self.breakers.start()
        for group in self.models.values():
            for deployment in group.deployments:
                await deployment.provider.start()
        if self.cache.semantic is not None:
            await self.cache.semantic.start()
        await self.prompts.start()
        if self.drift is not None:  # samples in every process, evaluated by API processes
            await self.drift.start(evaluate=self.role == "api")
        await self.rollouts.active.start()
        await self.rollout_samples.start()
        await self.shadow.start()
        if self.role == "api":
            await self.step_retention.start()  # the reasoning log's retention
            await self.slo.start()  # error budgets: every API process evaluates (docs/slo.md)
            await self.rollout_evaluator.start()
            await self.tasks.start()
            if self.settings.auth.enabled:
                await self.revocations.start()
            if self.settings.limits.budgets.action == "economy":
                await self.economy.start()
        log.info("runtime_started", role=self.role, models=sorted(self.models),
                 store=self.db.engine.url.render_as_string(hide_password=True),
                 shared_state="redis" if self.redis is not None else "in-process",
                 task_queue=self.settings.task_queue)  # fmt: skip

    def _audit_settings_loaded(self) -> None:
        """``settings.loaded``, once per process start: which file, and a digest of what
        was loaded (never a value of it)."""
        from guarita.settings import config_path

        try:
            path = config_path()
        except Exception:  # noqa: BLE001 - the settings were loaded; the file is only named
            path = None
        self.audit.record(
            "change",
            "settings.loaded",
            f"process:{self.role}",
            "settings",
            "success",
            details={"config_file": str(path.resolve()) if path is not None else None,
                     "digest": settings_digest(self.settings), "role": self.role,
                     "pid": os.getpid()},
        )  # fmt: skip

    async def submit_task(
        self, *, agent: str, payload: dict[str, Any], key_id: str | None, request_id: str | None
    ) -> TaskInfo:
        """Write the task (durable first), then hand it to the queue. ``task.queued`` is
        published before the hand-over, so that it precedes the worker's ``task.started``."""
        with self.tracing.tracer.start_as_current_span("guarita.task.enqueue"):
            task = await self.task_store.create(
                agent=agent, payload=payload, key_id=key_id, request_id=request_id
            )
            self.metrics.tasks.labels(agent, "queued").inc()
            queued = {"task_id": task.id, "agent": agent, "request_id": request_id}
            self.events.publish(events.TASK_QUEUED, queued)
            await self.tasks.submit(task, trace_context=self.tracing.inject())
        return task

    async def submit_batch(
        self, *, key_id: str | None, endpoint: str, input_file_id: str, completion_window: str,
        total: int, metadata: dict[str, str] | None, request_id: str | None,
    ) -> BatchInfo:  # fmt: skip
        """Write the batch, then its task (``kind="batch"``), and hand that to the queue."""
        window_s = self.settings.batches.completion_windows[completion_window]
        batch = await self.batches.create(
            key_id=key_id, endpoint=endpoint, input_file_id=input_file_id,
            completion_window=completion_window, window_s=window_s, total=total,
            metadata=metadata, request_id=request_id,
        )  # fmt: skip
        task = await self.task_store.create(
            agent="", payload={"batch_id": batch.id}, key_id=key_id, request_id=request_id,
            kind="batch",
        )  # fmt: skip
        await self.batches.set_task(batch.id, task.id)
        self.metrics.tasks.labels("batch", "queued").inc()
        queued = {"task_id": task.id, "agent": "", "request_id": request_id}
        self.events.publish(events.TASK_QUEUED, queued)
        await self.tasks.submit(task, trace_context=self.tracing.inject())
        return batch

    async def execute_task(
        self, task_id: str, trace_context: dict[str, str] | None = None
    ) -> Outcome:
        """Run one delivery of a task in a worker, as a child of the submitting request's trace."""
        parent = self.tracing.extract(trace_context)
        tracer = self.tracing.tracer
        with tracer.start_as_current_span(
            "guarita.task.run", context=parent, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("guarita.task.id", task_id)
            outcome = await self.executor.execute(task_id)
        if self.role == "worker":
            await self.records.flush()  # a worker may be killed any time after this
        return outcome

    async def readiness(self) -> dict[str, Any]:
        checks: dict[str, bool] = {"store": await self.db.ping()}
        if self.redis is not None:
            checks["redis"] = await redis_backend.ping(self.redis)
        model = self.default_model
        group = self.models.get(model)
        ready = [await d.provider.ready() for d in group.deployments] if group else [False]
        checks[f"model:{model}"] = any(ready)
        # records waiting on disk: the store or the writer cannot keep up (degraded, not
        # lost); out of rotation until it catches up
        checks["records"] = self.records.healthy
        return {
            "ready": all(checks.values()),
            "checks": checks,
            "records_pending": self.records.backlog,
        }

    async def aclose(self) -> None:
        if self.role == "api":
            await self.step_retention.aclose()
            await self.slo.aclose()
            await self.revocations.aclose()
            await self.auth.aclose()
            await self.tasks.aclose()
        if self._background:  # batches abandoned by their task: failed before the store goes
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.rollout_evaluator.aclose()
        await self.shadow.aclose()
        await self.rollout_samples.aclose()
        await self.rollouts.active.aclose()
        await self.recording.aclose()  # settlements of streams that ended
        await self.rate_limits.aclose()
        await self.economy.aclose()
        await self.breakers.aclose()
        await self.prompts.aclose()
        if self.drift is not None:
            await self.drift.aclose()
        await self.scoring.aclose()
        if self.cache.semantic is not None:
            await self.cache.semantic.aclose()
        await self.state.aclose()
        await self.records.aclose()
        await self.steps.aclose()
        await self.audit.aclose()
        await self.events.aclose()
        await asyncio.gather(
            *(d.provider.aclose() for g in self.models.values() for d in g.deployments)
        )
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)
        await self.db.aclose()
        self.tracing.shutdown()
        self.metrics.process_exited()
        log.info("runtime_stopped", role=self.role, records_written=self.records.written)
