"""Rollout samples, off the hot path: an answered request of an agent in a canary is
handed over with ``put_nowait`` (a full queue drops it, counted), a worker scores its
relevance (cosine of the question and the answer on WordLlama: the live heuristics do not
see an off-topic answer) and the sample writer stores it in batches."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from guarita.aio import cancel_and_wait
from guarita.errors import ConfigError
from guarita.ops.scorers import RelevanceScorer, ScoreInput
from guarita.store.rollouts import SampleWriter
from guarita.types import FallbackLevel, Reply

log = structlog.get_logger("guarita.rollouts")

DRAIN_ON_CLOSE_S = 5.0


@dataclass(frozen=True, slots=True)
class Observation:
    """One answered (or failed) request of one arm of a rollout's stage."""

    rollout_id: str
    agent: str
    stage: int
    variant: str
    request_id: str
    ok: bool
    latency_ms: float
    quality: float | None = None
    consistency: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    messages: tuple[dict[str, Any], ...] = ()
    answer: str = ""


MODEL_LEVELS = frozenset({FallbackLevel.PRIMARY, FallbackLevel.DEPLOYMENT})


def answered_by_its_model(reply: Reply) -> bool:
    """Whether the variant's own model answered: another model, rules or the static reply
    answering means it failed."""
    return reply.fallback_level in MODEL_LEVELS


def sample_quality(quality: float | None, relevance: float | None) -> float | None:
    """The lower of the two: a fluent answer about something else is a poor answer."""
    values = [v for v in (quality, relevance) if v is not None]
    return min(values) if values else None


class SampleRecorder:
    def __init__(
        self, writer: SampleWriter, *, relevance: RelevanceScorer | None, queue_size: int,
        on_drop: Callable[[str], None] = lambda agent: None,
    ) -> None:  # fmt: skip
        self.writer = writer
        self._relevance = relevance
        self._queue: asyncio.Queue[Observation] = asyncio.Queue(maxsize=queue_size)
        self._on_drop = on_drop
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def observe(self, observation: Observation) -> None:
        """Never waits: a full queue drops the sample."""
        try:
            self._queue.put_nowait(observation)
        except asyncio.QueueFull:
            self.dropped += 1
            self._on_drop(observation.agent)

    async def start(self) -> None:
        await self.writer.start()
        self._task = asyncio.create_task(self._run(), name="rollout-samples")

    async def _run(self) -> None:
        while True:
            observation = await self._queue.get()
            try:
                self.writer.add(await self._row(observation))
            except Exception:  # one bad sample must not stop the others
                log.exception("rollout_sample_failed", rollout_id=observation.rollout_id)
            finally:
                self._queue.task_done()

    async def _row(self, o: Observation) -> dict[str, Any]:
        relevance = None
        if self._relevance is not None and o.ok and o.answer:
            try:
                relevance = await self._relevance.score(ScoreInput(list(o.messages), o.answer))
            except ConfigError as exc:  # the semantic extra is not installed
                log.warning("rollout_relevance_unavailable", error=str(exc))
                self._relevance = None
        return {
            "sample_id": secrets.token_hex(16), "rollout_id": o.rollout_id, "stage": o.stage,
            "variant": o.variant, "at": datetime.now(UTC), "request_id": o.request_id,
            "ok": o.ok, "latency_ms": o.latency_ms,
            "quality": sample_quality(o.quality, relevance) if o.ok else None,
            "relevance": relevance, "consistency": o.consistency,
            "input_tokens": o.input_tokens, "output_tokens": o.output_tokens,
            "cost_usd": o.cost_usd,
        }  # fmt: skip

    async def drain(self) -> None:
        """Until every sample handed over so far is scored and written (tests, shutdown)."""
        await self._queue.join()
        await self.writer.flush()

    async def aclose(self) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), DRAIN_ON_CLOSE_S)
            await cancel_and_wait(self._task)
        await self.writer.aclose()
