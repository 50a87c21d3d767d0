"""The shadow runner: a sampled share of an agent's live requests mirrored to a rollout's
candidate in the background, and each pair of answers compared.

The live path only offers a job (``put_nowait`` on a bounded queue; full: dropped and
counted) after its answer is complete, so a candidate that raises, hangs or answers 500s
changes nothing there: not the answer, not its latency. ``concurrency`` workers run the
candidate through the pipeline as an internal call (:data:`SHADOW_CALLER`: no key, so no
key's limits or budget pay; its record carries the rollout id, variant ``shadow`` and
its cost), each within ``timeout_s``, and never touch the caller's session. A share
(``self_similarity_share``) of the mirrored requests also runs the stable version again:
how much it agrees with itself calibrates the candidate's similarity.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from guarita.errors import GuaritaError
from guarita.ops.rollout_samples import answered_by_its_model
from guarita.ops.rollouts import Route
from guarita.settings_rollouts import ShadowPolicy
from guarita.store.rollouts import PairWriter
from guarita.store.sessions import Turn
from guarita.types import Call, Caller, Reply

log = structlog.get_logger("guarita.shadow")

SHADOW_CALLER = Caller(key_id=None, name="guarita-shadow", tier="internal", auth="none")
"""Who mirrored calls are made as: no key and no configured tier, so rate limits and
budgets (which count per key and tier) leave them out."""


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One live request to mirror: what was asked (the history the live call sent, and
    the message) and how the live answer went."""

    route: Route
    request_id: str
    message: str
    history: tuple[tuple[str, str], ...]
    live_answer: str
    live_ok: bool
    live_latency_ms: float
    live_tokens: int
    live_quality: float | None

    @property
    def agent(self) -> str:
        return self.route.rollout.agent


RunMirror = Callable[[ShadowJob, str | None, str | None, str], Awaitable[Reply]]
"""(job, prompt ref, model, endpoint) -> the pipeline's reply (``AgentService.mirror``)."""
Similarity = Callable[[str, str], Awaitable[float]]


@dataclass(slots=True)
class _Run:
    ok: bool
    latency_ms: float
    reply: Reply | None = None
    error: str | None = None


class ShadowRunner:
    def __init__(
        self, run: RunMirror, writer: PairWriter, similarity: Similarity, policy: ShadowPolicy,
        *, on_outcome: Callable[[str, str], None] = lambda agent, outcome: None,
        draw: Callable[[], float] = random.random,
    ) -> None:  # fmt: skip
        self._run_mirror = run
        self.writer = writer
        self._similarity = similarity
        self._policy = policy
        self._on_outcome = on_outcome
        self._draw = draw
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=policy.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self.in_flight = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._queue.qsize() + self.in_flight

    def _enqueue(self, job: ShadowJob) -> bool:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            self._on_outcome(job.agent, "dropped")
            return False
        return True

    def mirror_live(
        self, route: Route, call: Call, reply: Reply, message: str, history: list[Turn]
    ) -> bool:
        """Offer the live request the agent service just answered, with probability
        ``sample_share``; never waits (a full queue drops it). True when it was queued."""
        if self._draw() >= self._policy.sample_share:
            return False
        latency = call.record.latency_ms or (time.perf_counter() - call.started) * 1000
        return self._enqueue(ShadowJob(
            route=route, request_id=call.request_id, message=message,
            history=tuple((t.role, t.content) for t in history), live_answer=reply.text,
            live_ok=answered_by_its_model(reply),
            live_latency_ms=latency, live_tokens=reply.usage.total_tokens,
            live_quality=reply.quality,
        ))  # fmt: skip

    async def start(self) -> None:
        await self.writer.start()
        self._workers = [
            asyncio.create_task(self._work(), name=f"shadow-{i}")
            for i in range(self._policy.concurrency)
        ]

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self.in_flight += 1
            try:
                self.writer.add(await self._pair(job))
            except Exception:  # one bad mirror must not stop the worker
                log.exception("shadow_failed", rollout_id=job.route.rollout.id)
            finally:
                self.in_flight -= 1
                self._queue.task_done()

    async def _timed(self, job: ShadowJob, prompt: str | None, model: str | None,
                     endpoint: str) -> _Run:  # fmt: skip
        started = time.perf_counter()
        try:
            reply = await asyncio.wait_for(
                self._run_mirror(job, prompt, model, endpoint), self._policy.timeout_s
            )
        except TimeoutError:
            return _Run(False, (time.perf_counter() - started) * 1000, error="timeout")
        except GuaritaError as exc:
            return _Run(False, (time.perf_counter() - started) * 1000,
                        error=exc.code or exc.error_type)  # fmt: skip
        ok = answered_by_its_model(reply)  # a fallback answering is the candidate failing
        return _Run(ok, (time.perf_counter() - started) * 1000, reply,
                    error=None if ok else f"fallback_{reply.fallback_level.value}")  # fmt: skip

    async def _pair(self, job: ShadowJob) -> dict[str, Any]:
        rollout = job.route.rollout
        candidate = await self._timed(job, rollout.candidate_prompt or rollout.stable_prompt,
                                      rollout.candidate_model, "rollout.shadow")  # fmt: skip
        self._on_outcome(job.agent, "ok" if candidate.ok else (candidate.error or "failed"))
        reply = candidate.reply
        similarity = None
        if reply is not None and candidate.ok and job.live_ok:
            similarity = await self._similarity(job.live_answer, reply.text)
        self_similarity = None
        if job.live_ok and self._draw() < self._policy.self_similarity_share:
            again = await self._timed(job, rollout.stable_prompt, None, "rollout.shadow_stable")
            if again.reply is not None and again.ok:
                self_similarity = await self._similarity(job.live_answer, again.reply.text)
        return {
            "pair_id": secrets.token_hex(16), "rollout_id": rollout.id, "at": datetime.now(UTC),
            "request_id": job.request_id, "live_ok": job.live_ok, "candidate_ok": candidate.ok,
            "candidate_error": candidate.error, "similarity": similarity,
            "self_similarity": self_similarity, "live_latency_ms": job.live_latency_ms,
            "candidate_latency_ms": candidate.latency_ms, "live_tokens": job.live_tokens,
            "candidate_tokens": reply.usage.total_tokens if reply is not None else 0,
            "candidate_cost_usd": reply.cost_usd if reply is not None else 0.0,
            "live_quality": job.live_quality,
            "candidate_quality": reply.quality if reply is not None else None,
        }  # fmt: skip

    async def drain(self) -> None:
        """Until every job queued so far is mirrored and written (tests)."""
        await self._queue.join()
        await self.writer.flush()

    async def aclose(self) -> None:
        """Running mirrors are cancelled: the shadow never holds up a shutdown."""
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await self.writer.aclose()
