"""Behaviour: what each chat answer says about the model's behaviour, per agent, model and
prompt version, into the metrics and the request record (docs/observability.md).

Runs just inside Recording, so its finish hook runs after the scoring and consistency
stages' (the quality and consistency are known) and before the record is written. Per
answer: its length, whether it opens as a refusal (the quality checks' pattern), and the
model's confidence, ``exp(mean token logprob)``, when the provider returned logprobs (the
OpenAI ``choices[0].logprobs.content`` of a complete answer, or a provider's own
measurement on ``Completion.confidence``, as llama.cpp's). A few microseconds.
"""

from __future__ import annotations

import math
from typing import Any

from guarita.pipeline import Next
from guarita.resilience.quality import REFUSAL
from guarita.telemetry.metrics import Metrics
from guarita.types import Call, Reply


def confidence_of(reply: Reply) -> float | None:
    """exp(mean logprob) of the answer's tokens, or None without logprobs."""
    completion = reply.completion
    if completion is None:
        return None
    if completion.confidence is not None:
        return completion.confidence
    try:
        content: Any = completion.body["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, list) or not content:
        return None
    values = [t.get("logprob") for t in content if isinstance(t, dict)]
    numbers = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not numbers:
        return None
    return round(math.exp(sum(numbers) / len(numbers)), 6)


class Behaviour:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(self, call: Call, next: Next) -> Reply:
        reply = await next(call)
        if call.operation == "chat":
            reply.on_finish(lambda done, error: self.observe(call, done, error))
        return reply

    def observe(self, call: Call, reply: Reply, error: BaseException | None) -> None:
        if error is not None:
            return
        m, record = self._metrics, call.record
        version = record.prompt_version
        labels = (call.agent or "direct", call.model, "" if version is None else str(version))
        text = reply.text
        record.answer_chars = len(text)
        record.refusal = REFUSAL.match(text) is not None
        record.confidence = confidence_of(reply)
        m.child(m.answer_length, *labels).observe(len(text))
        if record.refusal:
            m.child(m.answer_refusals, *labels).inc()
        if record.confidence is not None:
            m.child(m.answer_confidence, *labels).observe(record.confidence)
        if record.scores:
            m.child(m.answer_quality, *labels).observe(reply.quality)
        if record.consistency is not None:
            m.child(m.answer_consistency, *labels).observe(record.consistency)
