"""One batch line, run as its route would run it for the batch's key.

The body is validated by the route's own request model, the model name resolved the same
way (an agent's defaults included), and the call goes through the whole pipeline: the
key's limits, the cache, costs and the request record apply, with ``endpoint="batch"``.
A refusal by a rate limit (429) waits its ``Retry-After`` and tries again, as long as
the batch goes on; any other error is the line's, with the status the route would send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from guarita.api.errors import validation_message
from guarita.api.schemas import ChatCompletionRequest, EmbeddingRequest
from guarita.api.shapes import apply_agent, embeddings_body, resolve_model
from guarita.batches.input import BatchRequest
from guarita.errors import BudgetExceeded, GuaritaError, InvalidRequest, RateLimited
from guarita.pipeline import Next
from guarita.settings import Settings
from guarita.store.batches import LineOutcome
from guarita.types import Call, Caller

log = structlog.get_logger("guarita.batches")

Deadline = Callable[[str, str | None, float | None], float]
ENDPOINT = "batch"
"""The ``endpoint`` of a batch line's call and request record."""


class LineRunner:
    def __init__(
        self, settings: Settings, pipeline: Next, deadline: Deadline, *, max_wait_s: float
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._deadline = deadline
        self._max_wait = max_wait_s

    async def run(
        self, request: BatchRequest, caller: Caller, *, request_id: str, stop: asyncio.Event
    ) -> LineOutcome | None:
        """The line's outcome; None if the batch stopped (cancelled, expired) while the
        line waited out a rate limit, so that it has no outcome yet."""
        while True:
            try:
                body = await self._call(request, caller, request_id)
            except BudgetExceeded as exc:  # waiting cannot help before its period ends
                return failed(exc, request_id)
            except RateLimited as exc:
                wait = min(max(exc.retry_after or 1.0, 0.05), self._max_wait)
                log.info(
                    "batch_line_rate_limited", request_id=request_id, wait_s=wait, code=exc.code
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                if stop.is_set():
                    return None
            except GuaritaError as exc:
                return failed(exc, request_id)
            else:
                return LineOutcome(True, 200, request_id, body)

    async def _call(self, request: BatchRequest, caller: Caller, request_id: str) -> Any:
        if request.url == "/v1/embeddings":
            return await self._embeddings(request.body, caller, request_id)
        return await self._chat(request.body, caller, request_id)

    async def _chat(self, body: dict[str, Any], caller: Caller, request_id: str) -> Any:
        payload = _validated(ChatCompletionRequest, body)
        if payload.stream:
            raise InvalidRequest(
                "stream: a batch line cannot stream; leave it out",
                param="stream",
                code="invalid_body",
            )
        model, agent = resolve_model(self._settings, payload.model)
        call_body = payload.provider_body()
        if agent is not None:
            apply_agent(self._settings, agent, call_body)
        call = Call(
            request_id=request_id,
            model=model,
            body=call_body,
            caller=caller,
            agent=agent,
            endpoint=ENDPOINT,
            deadline=self._deadline(model, agent, None),
            requested_max_tokens=payload.max_completion_tokens or payload.max_tokens,
        )
        reply = await self._pipeline(call)
        assert reply.completion is not None
        return reply.completion.body

    async def _embeddings(self, body: dict[str, Any], caller: Caller, request_id: str) -> Any:
        payload = _validated(EmbeddingRequest, body)
        model, agent = resolve_model(self._settings, payload.model)
        inputs = [payload.input] if isinstance(payload.input, str) else payload.input
        call = Call(
            request_id=request_id,
            model=model,
            body={"input": inputs},
            caller=caller,
            agent=agent,
            endpoint=ENDPOINT,
            operation="embeddings",
            deadline=self._deadline(model, agent, None),
        )
        reply = await self._pipeline(call)
        assert reply.embeddings is not None
        return embeddings_body(reply.embeddings, payload.encoding_format)


_Body = TypeVar("_Body", ChatCompletionRequest, EmbeddingRequest)


def _validated(model: type[_Body], body: Any) -> _Body:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [dict(e) for e in exc.errors(include_url=False)]
        message, param = validation_message(errors)
        raise InvalidRequest(
            message or "invalid request body", param=param, code="invalid_body"
        ) from None


def failed(exc: GuaritaError, request_id: str | None) -> LineOutcome:
    """A line that ended in ``exc``: the error body the route would have sent, and the
    ``{"code", "message"}`` of the error file."""
    error = {"code": exc.code or exc.error_type, "message": exc.message}
    return LineOutcome(False, exc.status_code, request_id, exc.to_body(), error)
