"""Recording: metrics, the request record and the fields of the request's log line.

Runs outermost, so it sees every outcome, including failures of the stages inside it.
For a stream it records when the stream ends, from what was actually sent.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from guarita.errors import GuaritaError
from guarita.pipeline import Next
from guarita.store.records import RecordWriter, new_record_id
from guarita.telemetry.events import REQUEST_COMPLETED, EventPublisher
from guarita.telemetry.metrics import Metrics
from guarita.types import Call, Reply


class Recording:
    def __init__(self, metrics: Metrics, writer: RecordWriter, events: EventPublisher) -> None:
        self._metrics = metrics
        self._writer = writer
        self._events = events

    async def __call__(self, call: Call, next: Next) -> Reply:
        self.begin()
        try:
            reply = await next(call)
        except BaseException as exc:
            self.finish(call, None, exc)
            raise
        reply.on_finish(lambda finished, error: self.finish(call, finished, error))
        return reply

    def begin(self) -> None:
        self._metrics.active.inc()

    def finish(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        """Count, record and annotate one call that :meth:`begin` started."""
        self._metrics.active.dec()
        elapsed = time.perf_counter() - call.started
        agent = call.agent or "direct"
        status = "success" if error is None else "error"
        if isinstance(error, GuaritaError):
            status_code, error_type = error.status_code, error.error_type
        elif error is not None:
            status_code, error_type = 499 if _is_cancel(error) else 500, type(error).__name__
        else:
            status_code, error_type = 200, None
        m = self._metrics
        m.requests.labels(agent, status).inc()
        m.duration.labels(agent).observe(elapsed)
        record: dict[str, Any] = {
            "record_id": new_record_id(),
            "request_id": call.request_id,
            "created_at": datetime.now(UTC),
            "key_id": call.caller.key_id,
            "endpoint": call.endpoint,
            "agent": call.agent,
            "model": call.model,
            "provider": reply.provider if reply else None,
            "upstream_model": reply.model if reply else None,
            "status": status,
            "status_code": status_code,
            "error_type": error_type,
            "stream": call.stream,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": 0.0,
            "latency_ms": round(elapsed * 1000, 3),
            "session_id": call.session_id,
            "served_by": reply.served_by if reply else None,
            "deployment": reply.deployment if reply else None,
            "fallback_level": reply.fallback_level if reply else None,
            "tokens_saved": call.info.get("tokens_saved", 0),
        }
        if reply is not None:
            usage = reply.usage
            record["input_tokens"] = usage.input_tokens
            record["output_tokens"] = usage.output_tokens
            record["cost_usd"] = reply.cost_usd
            if usage.total_tokens:
                m.tokens.labels(agent, call.model).inc(usage.total_tokens)
                m.tokens_by_kind.labels(call.model, "input").inc(usage.input_tokens)
                m.tokens_by_kind.labels(call.model, "output").inc(usage.output_tokens)
            if reply.cost_usd:
                m.cost.labels(agent).inc(reply.cost_usd)
            if error is None:
                m.fallbacks.labels(agent, reply.fallback_level).inc()
        self._writer.add(record)
        if self._events.enabled:
            data = dict(record)
            data["created_at"] = record["created_at"].isoformat()
            self._events.publish(REQUEST_COMPLETED, data)
        if isinstance(error, GuaritaError) and error.detail:
            # what the caller was not told (upstream URL, status, exception): log only
            call.info["error_detail"] = error.detail
        call.info.update(
            agent=call.agent,
            model=call.model,
            provider=record["provider"],
            input_tokens=record["input_tokens"],
            output_tokens=record["output_tokens"],
            cost_usd=record["cost_usd"],
            fallback_level=record["fallback_level"],
        )


def _is_cancel(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError | GeneratorExit)
