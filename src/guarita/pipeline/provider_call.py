"""The innermost step: hand the call to the group of deployments serving its model
(balancing, retries and breakers happen there: ``resilience/group.py``).

With tracing on, the call gets a client span with the OpenTelemetry GenAI semantic
convention attributes; for a stream the span ends when the stream does.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace

from guarita.errors import ModelNotFound
from guarita.resilience.group import ModelGroup
from guarita.types import Call, Reply

_REQUEST_ATTRIBUTES = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "max_tokens": "gen_ai.request.max_tokens",
    "seed": "gen_ai.request.seed",
}


class ProviderCall:
    def __init__(
        self, models: Mapping[str, ModelGroup], *, tracer: trace.Tracer | None = None
    ) -> None:
        self._models = models
        self._tracer = tracer

    async def __call__(self, call: Call) -> Reply:
        group = self._models.get(call.model)
        if group is None:
            raise ModelNotFound(f"model {call.model!r} does not exist", param="model")
        if self._tracer is None:
            reply: Reply = await group(call)
            return reply
        span = self._tracer.start_span(f"{call.operation} {call.model}", kind=trace.SpanKind.CLIENT)
        span.set_attribute("gen_ai.operation.name", call.operation)
        span.set_attribute("gen_ai.system", group.primary.provider.name)
        span.set_attribute("gen_ai.request.model", call.model)
        record = call.record
        if call.agent:
            span.set_attribute("gen_ai.agent.name", call.agent)
        if record.prompt_hash:  # no GenAI name for a prompt's version yet: ours
            span.set_attribute("guarita.prompt.name", record.prompt_name or "")
            span.set_attribute("guarita.prompt.version", record.prompt_version or 0)
            span.set_attribute("guarita.prompt.hash", record.prompt_hash)
        for field, attribute in _REQUEST_ATTRIBUTES.items():
            value = call.body.get(field)
            if isinstance(value, int | float):
                span.set_attribute(attribute, value)
        try:
            with trace.use_span(span, end_on_exit=False):
                reply = await group(call)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, str(exc))
            span.end()
            raise

        def end(done: Reply, error: BaseException | None) -> None:
            span.set_attribute("gen_ai.response.model", done.model)
            span.set_attribute("gen_ai.usage.input_tokens", done.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", done.usage.output_tokens)
            if done.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [done.finish_reason])
            if error is not None:
                span.set_status(trace.StatusCode.ERROR, str(error))
            span.end()

        reply.on_finish(end)
        return reply
