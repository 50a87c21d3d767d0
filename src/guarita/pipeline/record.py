"""Recording: metrics, and the call's :class:`~guarita.types.RequestRecord` completed with
its outcome and handed to the store, the events and the request's log line.

Runs outermost, so it sees every outcome, including failures of the stages inside it.
For a stream it records when the stream ends, from what was actually sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from guarita.errors import GuaritaError
from guarita.pipeline import Background, Next
from guarita.store.records import RecordWriter
from guarita.telemetry.events import REQUEST_COMPLETED, EventPublisher
from guarita.telemetry.metrics import Metrics
from guarita.types import Call, Reply


class Recording:
    def __init__(
        self,
        metrics: Metrics,
        writer: RecordWriter,
        events: EventPublisher,
        background: Background | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``on_record``: each finished record's row, after it is handed to the writer
        (the SLO event counter)."""
        self._metrics = metrics
        self._on_record = on_record
        self._writer = writer
        self._events = events
        self.background = background or Background()

    async def __call__(self, call: Call, next: Next) -> Reply:
        self._metrics.active.inc()
        try:
            reply = await next(call)
        except BaseException as exc:
            self.finish(call, None, exc)
            raise
        reply.spawn = self.background.spawn
        reply.on_finish(lambda finished, error: self.finish(call, finished, error))
        return reply

    def finish(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        """Count and record one call, once it is over."""
        m = self._metrics
        m.active.dec()
        elapsed = time.perf_counter() - call.started
        agent = call.agent or "direct"
        record = call.record
        record.model = call.model
        record.latency_ms = round(elapsed * 1000, 3)
        if isinstance(error, GuaritaError):
            record.status, record.status_code, record.error_type = (
                "error", error.status_code, error.error_type)  # fmt: skip
            if error.detail:
                record.error_detail = error.detail
        elif error is not None:
            record.status, record.status_code = "error", 499 if _is_cancel(error) else 500
            record.error_type = type(error).__name__
        m.child(m.requests, agent, record.status).inc()
        m.child(m.duration, agent).observe(elapsed)
        if reply is not None:
            usage = reply.billed_usage
            record.provider = reply.provider
            record.upstream_model = reply.model
            record.served_by = reply.served_by
            record.deployment = reply.deployment
            record.fallback_level = reply.fallback_level
            record.quality = reply.quality
            record.input_tokens = usage.input_tokens
            record.output_tokens = usage.output_tokens
            record.cost_usd = reply.cost_usd
            if usage.total_tokens:
                m.child(m.tokens, agent, call.model).inc(usage.total_tokens)
                m.child(m.tokens_by_kind, call.model, "input").inc(usage.input_tokens)
                m.child(m.tokens_by_kind, call.model, "output").inc(usage.output_tokens)
            if reply.cost_usd:
                m.child(m.cost, agent).inc(reply.cost_usd)
            if error is None:
                m.child(m.fallbacks, agent, reply.fallback_level).inc()
        row = record.row()
        self._writer.add(row)
        if self._on_record is not None:
            self._on_record(row)
        if self._events.enabled:
            self._events.publish(REQUEST_COMPLETED, record.event())
        if call.context is not None:
            call.context.record = record

    async def aclose(self) -> None:
        """Wait for the finish work of streams that ended (their settlements)."""
        await self.background.aclose()


def _is_cancel(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError | GeneratorExit)
