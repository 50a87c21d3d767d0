"""Drift detection at run time: sampling live answers, embedding them off the hot path, and
testing each agent's current window against its baseline (docs/observability.md).

* :class:`DriftSampling` (a pipeline stage, just inside Recording): when a watched agent's
  chat answer ends, a share of them (``drift.sample_rate``) is offered, with its last user
  message, to the collector. On the request's path: one random draw and a list append.
* :class:`DriftCollector` (background): a bounded queue (full: dropped and counted),
  embedded in batches on WordLlama's thread and written in one insert per batch.
* :class:`DriftEvaluator` (background, every ``drift.interval_s``; in scale-out one process
  per period, by a shared counter): fixes the baseline when none (the first window after
  the start), and each time a new window of ``drift.window`` samples is complete tests it
  against the baseline (:func:`guarita.ops.drift.compare`, in a thread). Each result is a
  row, the metrics ``guarita_drift_score`` and ``guarita_drift_level``, and on a change of
  level an event and an audit entry; at warning or worse a ``guarita.drift.review_requested``
  event; at urgent on the answers, the ``on_urgent`` hooks (the rollout service rolls a
  canary back through one).

Windows are tumbling: each tested window starts after the previous one ended, so the
evaluations are independent and each raises a false warning with probability at most
``drift.alpha``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from guarita.aio import cancel_and_wait
from guarita.ops.drift import DriftLevel, DriftReport, DriftThresholds, compare
from guarita.pipeline import Next
from guarita.providers.common import message_text
from guarita.settings_drift import DriftSettings
from guarita.state import Values
from guarita.store.drift import Baseline, DriftStore, Evaluation, Window
from guarita.telemetry import events
from guarita.types import Call, Reply

log = structlog.get_logger("guarita.drift")

KINDS = ("output", "input")
UrgentHook = Callable[[str, Evaluation], Awaitable[None]]
"""``on_urgent(agent, evaluation)``: an agent's answers drifted to urgent_rollback."""
BASELINE_FACTOR = 4
"""A baseline set by command may span more samples: its newest window x this are used."""


@dataclass(slots=True, frozen=True)
class Sample:
    agent: str
    kind: str
    model: str
    prompt_version: int | None
    created_at: datetime
    text: str


class DriftSampling:
    """Offers a share of a watched agent's finished chat answers (not cache hits, not
    failures, not empty) to ``offer``."""

    def __init__(
        self,
        settings: DriftSettings,
        agents: Iterable[str],
        offer: Callable[[list[Sample]], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._rate = settings.sample_rate
        self._inputs = settings.inputs
        self._agents = frozenset(agents)
        self._offer = offer
        self._random = (rng or random.Random()).random

    async def __call__(self, call: Call, next: Next) -> Reply:
        reply = await next(call)
        if call.agent in self._agents and call.operation == "chat":
            reply.on_finish(lambda done, error: self._sample(call, done, error))
        return reply

    def _sample(self, call: Call, reply: Reply, error: BaseException | None) -> None:
        if error is not None or reply.cache is not None or not reply.text.strip():
            return
        if self._random() >= self._rate:
            return
        agent, model, version = call.agent or "", call.model, call.record.prompt_version
        now = datetime.now(UTC)
        samples = [Sample(agent, "output", model, version, now, reply.text)]
        if self._inputs:
            users = [m for m in call.messages if m.get("role") == "user"]
            text = message_text(users[-1]) if users else ""
            if text.strip():
                samples.append(Sample(agent, "input", model, version, now, text))
        self._offer(samples)


class DriftCollector:
    """Embeds offered samples in batches and writes them, off the request's path."""

    def __init__(
        self,
        store: DriftStore,
        embedder: Callable[[], Awaitable[Any]],
        *,
        queue_max: int,
        batch_size: int,
        flush_interval_s: float,
        on_drop: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._max = queue_max
        self._batch = batch_size
        self._interval = flush_interval_s
        self._on_drop = on_drop
        self._pending: list[Sample] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def offer(self, samples: list[Sample]) -> None:
        if len(self._pending) + len(samples) > self._max:
            self._on_drop(len(samples))
            return
        self._pending.extend(samples)
        if len(self._pending) >= self._batch:
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="drift-collector")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("drift_samples_not_written")

    async def flush(self) -> None:
        """Embed and write everything pending now."""
        while self._pending:
            batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
            try:
                embedder = await self._embedder()
                vectors = await embedder.embed([s.text for s in batch])
            except Exception:
                self._on_drop(len(batch))
                raise
            rows = [
                {"agent": s.agent, "kind": s.kind, "model": s.model,
                 "prompt_version": s.prompt_version, "created_at": s.created_at,
                 "embedder": embedder.name, "vector": vector.astype("<f4").tobytes()}
                for s, vector in zip(batch, vectors, strict=True)
            ]  # fmt: skip
            await self._store.add_samples(rows)
            self.written += len(rows)

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - shutting down: what cannot be written is lost
            log.warning("drift_samples_lost_at_shutdown", pending=len(self._pending))


def _vectors(window: Window) -> Any:
    import numpy as np

    return np.stack([np.frombuffer(v, dtype="<f4") for v in window.vectors])


class DriftEvaluator:
    def __init__(
        self,
        store: DriftStore,
        settings: DriftSettings,
        agents: Iterable[str],
        *,
        turns: Values,
        publish: Callable[[str, dict[str, Any]], None],
        audit: Callable[..., None],
        on_result: Callable[[str, str, DriftReport], None] = lambda a, k, r: None,
    ) -> None:
        self._store = store
        self._settings = settings
        self.agents = sorted(agents)
        self._turns = turns
        self._publish = publish
        self._audit = audit
        self._on_result = on_result
        self._thresholds = DriftThresholds(alpha=settings.alpha, urgent_score=settings.urgent_score)
        self._urgent: list[UrgentHook] = []
        self._task: asyncio.Task[None] | None = None
        self.started_at = datetime.now(UTC)
        self.kinds = KINDS if settings.inputs else KINDS[:1]

    def on_urgent(self, hook: UrgentHook) -> None:
        """Call ``hook(agent, evaluation)`` when an agent's answers reach urgent_rollback."""
        self._urgent.append(hook)

    @property
    def hooks(self) -> tuple[UrgentHook, ...]:
        """The ``on_urgent`` hooks, in the order they are called."""
        return tuple(self._urgent)

    async def start(self) -> None:
        self.started_at = datetime.now(UTC)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="drift-evaluator")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_s)
            try:
                if await self.take_turn():
                    await self.evaluate_all()
            except Exception:
                log.exception("drift_evaluation_failed")

    async def take_turn(self, now: float | None = None) -> bool:
        """Whether this process evaluates the period ``now`` falls in: the first of all
        processes to ask (an atomic counter in the shared state), so each window is tested
        once however many API processes run."""
        interval = self._settings.interval_s
        period = int((time.time() if now is None else now) // interval)
        return await self._turns.incr(f"drift:turn:{period}", ttl_s=2 * interval) == 1

    async def evaluate_all(self) -> list[Evaluation]:
        done = []
        for agent in self.agents:
            for kind in self.kinds:
                evaluation = await self.evaluate(agent, kind)
                if evaluation is not None:
                    done.append(evaluation)
        return done

    async def _baseline(self, agent: str, kind: str) -> Baseline | None:
        baseline = await self._store.baseline(agent, kind)
        if baseline is not None:
            return baseline
        first = await self._store.window(agent, kind, since=self.started_at,
                                         limit=self._settings.window)  # fmt: skip
        if len(first) < self._settings.window:
            return None
        assert first.starts_at is not None and first.ends_at is not None
        baseline = await self._store.set_baseline(agent, kind, first.starts_at, first.ends_at,
                                                  "auto")  # fmt: skip
        self._audit("change", "drift.baseline_set", "system:drift", f"agent:{agent}", "success",
                    details=baseline.to_json())  # fmt: skip
        return baseline

    async def evaluate(self, agent: str, kind: str) -> Evaluation | None:
        """Test the next complete window after the last one tested; None when there is no
        baseline yet or the window is not complete."""
        size = self._settings.window
        baseline = await self._baseline(agent, kind)
        if baseline is None:
            return None
        latest = {e.kind: e for e in await self._store.latest(agent)}.get(kind)
        after = baseline.ends_at
        if (
            latest is not None
            and latest.report.get("baseline_set_at") == baseline.set_at.isoformat()
        ):
            after = max(after, datetime.fromisoformat(latest.report["window_ends_at"]))
        current = await self._store.window(agent, kind, after=after, limit=size)
        if len(current) < size:
            return None
        base = await self._store.window(agent, kind, since=baseline.starts_at,
                                        until=baseline.ends_at, limit=size * BASELINE_FACTOR,
                                        newest=True)  # fmt: skip
        if len(base) < 8:
            return None
        assert current.starts_at is not None and current.ends_at is not None
        seed = zlib.crc32(f"{agent}:{kind}:{current.ends_at.isoformat()}".encode())
        report = await asyncio.to_thread(compare, _vectors(base), _vectors(current),
                                         permutations=self._settings.permutations, seed=seed,
                                         thresholds=self._thresholds)  # fmt: skip
        evaluation = Evaluation(agent, kind, datetime.now(UTC), report.level.label,
                                round(report.score, 6), {
            **report.as_dict(), "window_starts_at": current.starts_at.isoformat(),
            "window_ends_at": current.ends_at.isoformat(),
            "baseline_starts_at": baseline.starts_at.isoformat(),
            "baseline_ends_at": baseline.ends_at.isoformat(),
            "baseline_set_at": baseline.set_at.isoformat(),
        })  # fmt: skip
        await self._store.add_result(evaluation)
        self._on_result(agent, kind, report)
        previous = DriftLevel.parse(latest.level) if latest is not None else DriftLevel.NO_ACTION
        await self._announce(evaluation, report.level, previous)
        return evaluation

    async def _announce(self, evaluation: Evaluation, level: DriftLevel,
                        previous: DriftLevel) -> None:  # fmt: skip
        agent, kind = evaluation.agent, evaluation.kind
        if level == previous:
            return
        r = evaluation.report
        data = {"agent": agent, "kind": kind, "level": level.label, "previous": previous.label,
                "score": evaluation.score, "mmd_p": r["mmd_p"],
                "classifier_p": r["classifier_p"], "n_baseline": r["n_baseline"],
                "n_current": r["n_current"]}  # fmt: skip
        self._publish(events.DRIFT_LEVEL_CHANGED, data)
        self._audit("change", "drift.level_changed", "system:drift", f"agent:{agent}",
                    "success", details=data)  # fmt: skip
        if level < DriftLevel.WARNING or level < previous:
            return
        urgent = level == DriftLevel.URGENT_ROLLBACK
        action = (
            "investigate the inputs"
            if kind == "input"
            else (
                "roll back the last change"
                if urgent
                else "compare recent answers with the baseline"
            )
        )
        self._publish(events.DRIFT_REVIEW_REQUESTED, {
            "agent": agent, "kind": kind, "level": level.label,
            "urgency": "high" if urgent else "normal", "reason": "drift",
            "suggested_action": action, "score": evaluation.score,
        })  # fmt: skip
        if urgent and kind == "output":
            for hook in self._urgent:
                try:
                    await hook(agent, evaluation)
                except Exception:
                    log.exception("drift_urgent_hook_failed", agent=agent)

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


class DriftService:
    """The sampling stage, the collector and the evaluator of the watched agents."""

    def __init__(
        self,
        settings: DriftSettings,
        store: DriftStore,
        agents: Iterable[str],
        *,
        embedder: Callable[[], Awaitable[Any]],
        turns: Values,
        publish: Callable[[str, dict[str, Any]], None],
        audit: Callable[..., None],
        on_result: Callable[[str, str, DriftReport], None],
        on_drop: Callable[[int], None],
    ) -> None:
        watched = sorted(agents)
        self.store = store
        self.collector = DriftCollector(store, embedder, queue_max=settings.queue_max,
                                        batch_size=settings.batch_size,
                                        flush_interval_s=settings.flush_interval_s,
                                        on_drop=on_drop)  # fmt: skip
        self.sampling = DriftSampling(settings, watched, self.collector.offer)
        self.evaluator = DriftEvaluator(store, settings, watched, turns=turns, publish=publish,
                                        audit=audit, on_result=on_result)  # fmt: skip

    async def start(self, *, evaluate: bool) -> None:
        await self.collector.start()
        if evaluate:
            await self.evaluator.start()

    async def aclose(self) -> None:
        await self.evaluator.aclose()
        await self.collector.aclose()


async def fix_baseline(
    store: DriftStore,
    agent: str,
    kind: str,
    *,
    since: datetime | None,
    until: datetime | None,
    window: int,
    set_by: str,
) -> Baseline:
    """The agent's baseline from its samples between ``since`` and ``until``; without
    them, its newest ``window`` samples. ValueError when fewer than 8 samples are there."""
    if since is None and until is None:
        found = await store.window(agent, kind, limit=window, newest=True)
    else:
        found = await store.window(agent, kind, since=since, until=until,
                                   limit=window * BASELINE_FACTOR, newest=True)  # fmt: skip
    if len(found) < 8 or found.starts_at is None or found.ends_at is None:
        raise ValueError(f"{len(found)} {kind} samples of agent {agent!r} there; at least 8 needed")
    return await store.set_baseline(agent, kind, found.starts_at, found.ends_at, set_by)


async def drift_report(store: DriftStore, agents: Iterable[str], agent: str | None = None
                       ) -> list[dict[str, Any]]:  # fmt: skip
    """Per agent and kind: the baseline, the latest evaluation and the samples stored."""
    names = {agent} if agent is not None else set(agents) | set(await store.agents())
    baselines = {(b.agent, b.kind): b for b in await store.baselines()}
    latest = {(e.agent, e.kind): e for e in await store.latest(agent)}
    rows = []
    for name in sorted(names):
        for kind in KINDS:
            count = await store.count(name, kind)
            baseline, evaluation = baselines.get((name, kind)), latest.get((name, kind))
            if not count and baseline is None and evaluation is None:
                continue
            rows.append({"agent": name, "kind": kind, "samples": count,
                         "baseline": baseline.to_json() if baseline else None,
                         "latest": evaluation.to_json() if evaluation else None})  # fmt: skip
    return rows
