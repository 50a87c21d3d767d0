"""Prometheus metrics: the five names the source documents use, plus ``guarita_*``.

Each runtime owns its own registry (no module-level collectors), so tests and several
apps in one process never clash. With several API processes (``guarita serve --workers``)
``PROMETHEUS_MULTIPROC_DIR`` is set, each process writes its values there, and any
process's ``/metrics`` reports the sum over all of them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SHARE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "agent_requests_total",
            "Model calls by agent and outcome.",
            ["agent_name", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "agent_request_duration_seconds",
            "Model call duration.",
            ["agent_name"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "agent_tokens_used_total",
            "Tokens used (input + output).",
            ["agent_name", "model"],
            registry=r,
        )
        self.cost = Counter("agent_cost_usd_total", "Cost in USD.", ["agent_name"], registry=r)
        self.active = Gauge(
            "agent_active_requests",
            "Model calls in progress.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.http_duration = Histogram(
            "guarita_http_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_by_kind = Counter(
            "guarita_tokens_total", "Tokens by direction.", ["model", "kind"], registry=r
        )
        self.records_pending = Gauge(
            "guarita_records_pending",
            "Request records waiting to be written.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.records_spooled = Gauge(
            "guarita_records_spooled",
            "Request records waiting in spool files on disk (the writer fell behind or the "
            "store was away).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.records_dead_lettered = Counter(
            "guarita_records_dead_lettered_total",
            "Request records the store refused, moved to the dead-letter file.",
            registry=r,
        )
        self.audit_entries = Counter(
            "guarita_audit_entries_total",
            "Audit entries recorded, by category (access, data, change) and outcome "
            "(success, denied, failure).",
            ["category", "outcome"],
            registry=r,
        )
        self.audit_pending = Gauge(
            "guarita_audit_pending",
            "Audit entries waiting to be written.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.audit_spooled = Gauge(
            "guarita_audit_spooled",
            "Audit entries waiting in spool files on disk (the store was away).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.audit_dead_lettered = Counter(
            "guarita_audit_dead_lettered_total",
            "Audit entries the store refused, moved to the dead-letter file.",
            registry=r,
        )
        self.budget_alerts = Counter(
            "guarita_budget_alerts_total",
            "Budget thresholds reached (once per budget, threshold and period).",
            ["budget", "threshold"],
            registry=r,
        )
        self.economy_calls = Counter(
            "guarita_economy_calls_total",
            "Calls served in economy mode, by the kind of budget used up (key, agent, total).",
            ["budget"],
            registry=r,
        )
        self.events_dropped = Counter(
            "guarita_events_dropped_total",
            "Lifecycle events dropped (sink too slow or down).",
            registry=r,
        )
        self.tasks = Counter(
            "guarita_tasks_total", "Tasks by outcome.", ["agent_name", "status"], registry=r
        )
        self.batch_lines = Counter(
            "guarita_batch_lines_total",
            "Batch API lines that ended, by endpoint and outcome (succeeded, failed).",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.batches = Counter(
            "guarita_batches_total",
            "Batches that ended, by status (completed, cancelled, expired, failed).",
            ["status"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "guarita_cache_lookups_total",
            "Response cache lookups by result (hit, semantic-hit, miss, bypass).",
            ["result"],
            registry=r,
        )
        self.cache_saved = Counter(
            "guarita_cache_saved_usd_total",
            "What response cache hits saved: the cached answers' cost at their prices.",
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "guarita_cache_hit_ratio",
            "Hits over lookups (bypasses excluded) of each process's response cache.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.cache_entries = Gauge(
            "guarita_cache_entries",
            "Response cache entries held in process (the embedded cache's LRU).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_semantic_entries = Gauge(
            "guarita_cache_semantic_entries",
            "Questions in each process's semantic index (every process holds all in scale-out).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.embedding_cache_hit_ratio = Gauge(
            "guarita_embedding_cache_hit_ratio",
            "Texts found in the embedding cache over texts embedded or found, per process.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.guard_verdicts = Counter(
            "guarita_guard_verdicts_total",
            "Guard verdicts other than allow: guard (injection, pii, pii_output, code), "
            "action (flag, block, redact, mask, report, annotate, review) and agent.",
            ["guard", "action", "agent_name"],
            registry=r,
        )
        self.tokens_saved = Counter(
            "guarita_tokens_saved_total",
            "Prompt tokens (estimated) that prompt compression removed.",
            ["agent_name"],
            registry=r,
        )

        self.circuit_state = Gauge(
            "guarita_circuit_state",
            "Breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            ["deployment"],
            registry=r,
            multiprocess_mode="max",
        )
        self.circuit_transitions = Counter(
            "guarita_circuit_transitions_total",
            "Breaker state changes.",
            ["deployment", "from_state", "to_state"],
            registry=r,
        )
        self.retries = Counter(
            "guarita_retries_total", "Retried upstream calls.", ["deployment"], registry=r
        )
        self.retry_budget_exhausted = Counter(
            "guarita_retry_budget_exhausted_total",
            "Retries refused by the retry budget.",
            ["deployment"],
            registry=r,
        )
        self.quality_failures = Counter(
            "guarita_quality_failures_total",
            "Answers failing a quality check.",
            ["deployment", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "guarita_fallback_answers_total",
            "Answers by fallback level.",
            ["agent_name", "level"],
            registry=r,
        )
        # quality (docs/quality.md): consistency checks; live scores are
        # guarita_answer_quality (per model and prompt version too, see _behaviour)
        self.consistency_checks = Counter(
            "guarita_consistency_checks_total",
            "Consistency checks of agents' calls, by outcome (ok, low).",
            ["agent_name", "outcome"],
            registry=r,
        )
        # error budgets and the deploy freeze (docs/slo.md)
        self.slo_events = Counter(
            "guarita_slo_events_total",
            "SLO events of agents' calls (the generated burn-rate rules' input), by SLO "
            "(availability, quality, consistency) and outcome (good, bad).",
            ["agent", "slo", "outcome"],
            registry=r,
        )
        self.slo_budget_remaining = Gauge(
            "guarita_slo_budget_remaining",
            "Share of an SLO's error budget left over its period, as evaluated in process "
            "(below 0: overspent).",
            ["agent", "slo"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.deploy_frozen = Gauge(
            "guarita_deploy_frozen",
            "1 while an agent's deploys are frozen by this SLO's used-up error budget.",
            ["agent", "slo"],
            registry=r,
            multiprocess_mode="max",
        )
        self.slo_budget_transitions = Counter(
            "guarita_slo_budget_transitions_total",
            "Error budget state changes (to ok, warning, exhausted), counted once across "
            "processes.",
            ["agent", "slo", "state"],
            registry=r,
        )
        self.deploy_freeze_refusals = Counter(
            "guarita_deploy_freeze_refusals_total",
            "Rollouts refused by a deploy freeze.",
            ["agent", "slo"],
            registry=r,
        )
        self._behaviour(r)
        # rollouts (docs/rollouts.md)
        self.rollout_decisions = Counter(
            "guarita_rollout_decisions_total",
            "Rollout decisions that changed a rollout, by agent and action (start, promote, "
            "rollback, complete, await_approval, approve, pause, resume, abort).",
            ["agent", "action"],
            registry=r,
        )
        self.rollout_stage_percent = Gauge(
            "guarita_rollout_stage_percent",
            "Percent of an agent's traffic on its rollout's candidate (0: none in effect).",
            ["agent"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.rollout_samples_dropped = Counter(
            "guarita_rollout_samples_dropped_total",
            "Rollout samples dropped because the scoring queue was full.",
            ["agent"],
            registry=r,
        )
        self.shadow_runs = Counter(
            "guarita_shadow_runs_total",
            "Mirrored requests of shadow rollouts, by outcome (ok, failed, timeout, dropped: "
            "the queue was full).",
            ["agent", "outcome"],
            registry=r,
        )
        self._multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _behaviour(self, r: CollectorRegistry) -> None:
        """AI behaviour per agent, model and prompt version, and drift (docs/observability.md)."""
        answer = ["agent_name", "model", "prompt_version"]
        self.answer_quality = Histogram(
            "guarita_answer_quality", "Quality score of scored answers (0..1).", answer,
            buckets=SHARE_BUCKETS, registry=r,
        )  # fmt: skip
        self.answer_consistency = Histogram(
            "guarita_answer_consistency", "Agreement of an answer's consistency trials (0..1).",
            answer, buckets=SHARE_BUCKETS, registry=r,
        )  # fmt: skip
        self.answer_length = Histogram(
            "guarita_answer_length_chars", "Chat answers' length in characters (its _count: "
            "answers, the refusal rate's denominator).", answer, buckets=LENGTH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.answer_refusals = Counter(
            "guarita_answer_refusals_total", "Chat answers that open as a refusal.", answer,
            registry=r,
        )  # fmt: skip
        self.answer_confidence = Histogram(
            "guarita_answer_confidence", "exp(mean token logprob) of answers whose provider "
            "returned logprobs (0..1).", answer, buckets=SHARE_BUCKETS, registry=r,
        )  # fmt: skip
        self.drift_score = Gauge(
            "guarita_drift_score", "Latest drift score (a lower bound on the total variation "
            "distance from the baseline window, 0..1) by agent and kind (output, input).",
            ["agent_name", "kind"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.drift_level = Gauge(
            "guarita_drift_level", "Latest drift level: 0 no_action, 1 monitor, 2 warning, "
            "3 urgent_rollback.", ["agent_name", "kind"], registry=r,
            multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.drift_samples_dropped = Counter(
            "guarita_drift_samples_dropped_total", "Drift samples dropped (queue full, or the "
            "embedder or store failed).", registry=r,
        )  # fmt: skip

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus_client takes a lock and
        rebuilds the key on every call, a few µs on each request's path (bench/README.md)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        if self._multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def set_circuit_state(self, deployment: str, state: str) -> None:
        self.circuit_state.labels(deployment).set({"closed": 0, "half_open": 1, "open": 2}[state])

    def process_exited(self) -> None:
        """Drop this process's live gauges from the multiprocess sum."""
        if self._multiprocess_dir:
            multiprocess.mark_process_dead(os.getpid(), self._multiprocess_dir)  # type: ignore[no-untyped-call]
