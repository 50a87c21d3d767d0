"""The OpenAI-compatible surface: chat completions (plain and SSE), models, embeddings.

A ``model`` may name a configured model or a configured agent; an agent adds its system
prompt and default sampling parameters, so agent frameworks can use declared agents by
only changing their base URL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from guarita.api.deps import (
    RuntimeDep,
    UserDep,
    client_ip,
    get_user,
    request_context,
    request_id,
)
from guarita.api.openapi import (
    DEADLINE_HEADER,
    MODEL_CALL_ERRORS,
    NO_USER_ROLE,
    RATE_LIMIT_HEADERS,
    ROUTE_HEADERS,
    SECURED,
    errors,
    ok,
    sse_content,
)
from guarita.api.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelList,
)
from guarita.api.shapes import apply_agent, embeddings_body, resolve_model
from guarita.errors import GuaritaError, InvalidRequest
from guarita.pipeline.cache import bypass_requested
from guarita.runtime import Runtime
from guarita.types import Call, Chunk, Reply

router = APIRouter(prefix="/v1", tags=["openai"])

_JSON = "application/json"
_DONE = b"data: [DONE]\n\n"


def requested_deadline_ms(request: Request) -> float | None:
    """``x-guarita-deadline-ms``: the caller's own deadline, clamped to the configured limits."""
    value = request.headers.get("x-guarita-deadline-ms")
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not ms > 0 or ms == float("inf"):
        raise InvalidRequest("x-guarita-deadline-ms: must be a positive number of milliseconds",
                             param="x-guarita-deadline-ms")  # fmt: skip
    return ms


_ANSWER_HEADERS = {
    **RATE_LIMIT_HEADERS,
    **ROUTE_HEADERS,
    "x-guarita-fallback-level": {
        "description": "Which level of the fallback chain answered: primary, deployment, "
        "model, rules or static",
        "required": True,
        "schema": {"type": "string"},
    },
    "x-guarita-quality": {
        "description": "The answering level's quality score, 0.00 to 1.00",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$"},
    },
}


@router.post(
    "/chat/completions",
    operation_id="createChatCompletion",
    response_model=None,
    responses={
        200: ok(
            ChatCompletion,
            "The answer; with `stream: true`, server-sent events of `chat.completion.chunk`s",
            content=sse_content(),
            headers=_ANSWER_HEADERS,
        ),
        **errors(*MODEL_CALL_ERRORS, described={404: "No model or agent of that name"}),
    },
    openapi_extra={**SECURED, "parameters": [DEADLINE_HEADER]},
)
async def chat_completions(payload: ChatCompletionRequest, request: Request) -> Response:
    return await answer_chat(request, payload)


ChatTarget = tuple[str, str | None, dict[str, Any]]
"""The model, the agent (or None) and the provider body of a chat request."""


def chat_target(runtime: Runtime, payload: ChatCompletionRequest) -> ChatTarget:
    """What a validated chat request calls, with its agent's system prompt and defaults."""
    model, agent = resolve_model(runtime.settings, payload.model)
    body = payload.provider_body()
    if agent is not None:
        apply_agent(runtime.settings, agent, body)
    return model, agent, body


async def answer_chat(
    request: Request, payload: ChatCompletionRequest, target: ChatTarget | None = None
) -> Response:
    """A validated chat request, authenticated, through the pipeline, answered; also the
    lean path's (``api/cached_chat.py``), which found ``target`` before authenticating."""
    # the hot path: runtime and caller fetched directly rather than through Depends,
    # whose resolution costs more than the rest of this function (bench/README.md)
    runtime: Runtime = request.app.state.runtime
    caller = await get_user(request)
    model, agent, body = target or chat_target(runtime, payload)
    include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
    asked = payload.max_completion_tokens or payload.max_tokens
    sent = request.headers
    call = Call(
        request_id=request_id(request),
        model=model,
        body=body,
        caller=caller,
        stream=payload.stream,
        include_usage=include_usage,
        agent=agent,
        context=request_context(request),
        deadline=runtime.deadline(model, agent, requested_deadline_ms(request)),
        requested_max_tokens=asked,
        client_ip=client_ip(request),
        cache_bypass=bypass_requested(sent.get("cache-control"), sent.get("x-guarita-cache")),
    )
    reply = await runtime.pipeline(call)
    headers = {
        "x-guarita-fallback-level": reply.fallback_level,
        "x-guarita-quality": f"{reply.quality:.2f}",
        **call.response_headers,
    }
    if not reply.is_stream:
        assert reply.completion is not None
        content = reply.completion.raw or orjson.dumps(reply.completion.body)
        return Response(content, media_type=_JSON, headers=headers)
    chunks = reply.chunks()
    first = await anext(chunks)  # fail with a proper status while none has been sent
    headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
    events = _sse(first, chunks, reply, include_usage)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _sse(
    first: Chunk, rest: AsyncIterator[Chunk], reply: Reply, include_usage: bool
) -> AsyncIterator[bytes]:
    """Server-sent events; ``[DONE]`` only after a complete answer, an error event otherwise."""
    try:
        chunk: Chunk | None = first
        while chunk is not None:
            is_usage_chunk = bool(chunk.get("usage")) and not chunk.get("choices")
            if include_usage or not is_usage_chunk:
                if not include_usage and "usage" in chunk:
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            chunk = await anext(rest, None)
    except GuaritaError as exc:
        yield b"data: " + orjson.dumps(exc.to_body()) + b"\n\n"
        return
    yield _DONE


@router.get(
    "/models",
    operation_id="listModels",
    response_model=None,
    responses={
        200: ok(ModelList, "The configured models and agents"),
        **errors(401, 403, described=NO_USER_ROLE),
    },
    openapi_extra=SECURED,
)
async def list_models(runtime: RuntimeDep, _caller: UserDep) -> Response:
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": m.provider}
        for name, m in runtime.settings.models.items()
    ] + [
        {"id": name, "object": "model", "created": created, "owned_by": "guarita-agent"}
        for name in runtime.settings.agents
        if name not in runtime.settings.models
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=_JSON)


@router.post(
    "/embeddings",
    operation_id="createEmbedding",
    response_model=None,
    responses={
        200: ok(EmbeddingList, "One vector per input, in order"),
        **errors(
            *MODEL_CALL_ERRORS,
            described={
                400: "Invalid request, or the model does not make embeddings",
                404: "No model or agent of that name",
            },
        ),
    },
    openapi_extra={**SECURED, "parameters": [DEADLINE_HEADER]},
)
async def embeddings(
    payload: EmbeddingRequest, request: Request, runtime: RuntimeDep, caller: UserDep
) -> Response:
    model, agent = resolve_model(runtime.settings, payload.model)
    inputs = [payload.input] if isinstance(payload.input, str) else payload.input
    call = Call(
        request_id=request_id(request),
        model=model,
        body={"input": inputs},
        caller=caller,
        agent=agent,
        endpoint="embeddings",
        operation="embeddings",
        context=request_context(request),
        deadline=runtime.deadline(model, agent, requested_deadline_ms(request)),
        client_ip=client_ip(request),
    )
    reply = await runtime.pipeline(call)
    result = reply.embeddings
    assert result is not None
    body = embeddings_body(result, payload.encoding_format)
    return Response(orjson.dumps(body), media_type=_JSON, headers=call.response_headers)
