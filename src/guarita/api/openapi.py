"""``/openapi.json`` as the server really answers: every status a route can send, one error
schema, the bearer key, the response headers, and no 422 (validation errors leave as 400,
``api/errors.py``).

Routes declare their answers with ``responses=`` and ``openapi_extra=`` (``ok``, ``errors``,
``SECURED``): documentation only, read once when the schema is built, never on a request.
The handlers write their bodies themselves (``response_model=None``), so nothing validates
or re-serialises an answer on the way out. :func:`install_openapi` then fills in what
depends on the whole app or on settings: whether a key is needed, the configured model and
agent names as examples, and the longest message the agents' context windows take.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from guarita.agents import longest_message
from guarita.api.schemas import INT_MAX, INT_MIN, ChatCompletionChunk, ErrorResponse
from guarita.settings import Settings

BEARER = "bearerAuth"
SECURED: dict[str, Any] = {"security": [{BEARER: []}]}
"""``openapi_extra`` of a route that needs an API key."""

_REF = "#/components/schemas/"
_MAX_JSON_DEPTH = 128

_ERRORS: dict[int, str] = {
    400: "Invalid request: malformed JSON, wrong types or values, a guard's refusal "
    "(`message_too_long`, `too_many_messages`, `prompt_injection_detected`, `pii_detected`), "
    "or refused by the upstream",
    401: "API key missing, invalid or revoked",
    403: "The key's tier may not use this endpoint or model",
    404: "Not found",
    408: "The request line and headers took longer than `server.header_timeout_s`",
    409: "The resource's state refuses the request",
    413: "Request body larger than `server.max_body_bytes`",
    429: "A limit of the key, its tier or the caller's address (`rate_limit_exceeded`), or "
    "the upstream's (its `Retry-After` is passed on)",
    431: "Request line and headers larger than `server.max_header_bytes`",
    500: "Internal error; the server log has the details under the request id",
    502: "The upstream failed, refused our credentials, or answered something unusable",
    503: "Overloaded or circuit open; retry after `Retry-After` seconds",
    504: "The upstream timed out, or the call's deadline passed",
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_REQUEST_ID = {
    "description": "The request's id: the caller's own `x-request-id` if it was 1-128 printable "
    "ASCII characters, else a generated one. Every log line and record of the request has it.",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
DEADLINE_HEADER: dict[str, Any] = {
    "name": "x-guarita-deadline-ms",
    "in": "header",
    "required": False,
    "description": "This call's own deadline in milliseconds, clamped to "
    "`resilience.min_deadline_s`..`max_deadline_s`",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}

JSON_VALUE: dict[str, Any] = {
    "description": "Any JSON value that every provider, store and encoder can take: nested at "
    f"most {_MAX_JSON_DEPTH} levels, integers within 64 bits, strings of valid Unicode.",
    "anyOf": [
        {"type": "object", "additionalProperties": {"$ref": _REF + "JsonValue"}},
        {"type": "array", "items": {"$ref": _REF + "JsonValue"}},
        {"type": "string"},
        {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "boolean"},
        {"type": "null"},
    ],
}


RATE_LIMIT_HEADERS: dict[str, Any] = {
    f"x-ratelimit-{what}-{kind}": {
        "description": f"OpenAI's rate-limit header: the {what} of the key's "
        f"{'requests' if kind == 'requests' else 'tokens'} limit (sent when the key has one)",
        "required": False,
        "schema": {"type": "string"},
    }
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
}

ROUTE_HEADERS: dict[str, Any] = {
    "x-guarita-route": {
        "description": "With complexity routing (an agent's `routing`): the prompt's level, "
        "simple, medium or complex (docs/routing.md)",
        "required": False,
        "schema": {"type": "string", "enum": ["simple", "medium", "complex"]},
    },
    "x-guarita-routed-model": {
        "description": "With complexity routing: the model the call was routed to",
        "required": False,
        "schema": {"type": "string"},
    },
}

NO_USER_ROLE = {403: "The caller holds neither the role `user` nor `admin`"}
"""The 403 of a model API route to a caller without the role ``user`` (docs/auth.md)."""

MODEL_CALL_ERRORS = (400, 401, 403, 404, 413, 429, 502, 503, 504)
"""What a keyed route that calls a model can answer: its request, its key (and the limits
of its tier: 403 for a model it may not use, 429), an unknown name, and everything the
model's upstream and the resilience layer can end with."""


def errors(
    *statuses: int, described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses a route can answer, each in the one
    error schema; ``described`` says more than the generic text. Every route can answer 500,
    and 408 and 431, which the HTTP layer sends before routing (``api/http_limits.py``)."""
    described = described or {}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 408, 431, 500}):
        # the schema by reference rather than ``model``: FastAPI would give it the
        # route's media type (text/plain for /metrics); errors are always JSON
        entry: dict[str, Any] = {
            "description": described.get(status, _ERRORS[status]),
            "content": {"application/json": {"schema": {"$ref": _REF + ErrorResponse.__name__}}},
        }
        if status in (429, 503):
            entry["headers"] = {"Retry-After": _RETRY_AFTER}
        responses[status] = entry
    return responses


def ok(model: type[Any], description: str, **extra: Any) -> dict[str, Any]:
    """A ``responses=`` entry for a JSON success answer described by ``model``."""
    return {"model": model, "description": description, **extra}


def sse_content() -> dict[str, Any]:
    """``text/event-stream`` of chat completions: one event per chunk, then ``[DONE]``, or an
    error event (and no ``[DONE]``) when the stream fails after its first byte. In the
    convention FastAPI uses for OpenAPI 3.1, ``itemSchema`` describes one event."""
    data = {
        "type": "string",
        "description": "a JSON `chat.completion.chunk`; a JSON error object if the answer "
        "failed after its first byte; `[DONE]` after a complete answer",
        "anyOf": [
            {"const": "[DONE]"},
            {
                "contentMediaType": "application/json",
                "contentSchema": {
                    "anyOf": [
                        {"$ref": _REF + ChatCompletionChunk.__name__},
                        {"$ref": _REF + ErrorResponse.__name__},
                    ]
                },
            },
        ],
    }
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": data,
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }
    return {"text/event-stream": {"itemSchema": event}}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve :func:`build_openapi` (built once, on the first request for it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (ChatCompletionChunk, ErrorResponse):  # referenced by hand, see errors()
        _add_model_schema(schemas, model)
    schemas["JsonValue"] = JSON_VALUE
    for name in _request_schemas(schema):
        _constrain_passed_fields(schemas[name])
        _exact_bounds(schemas[name])
    components["headers"] = {"RequestId": _REQUEST_ID}
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `guarita keys create`, or a JWT when `auth.jwt` "
            "is on (docs/auth.md)",
        }
    }
    for operation in _operations(schema):
        _fit_security(operation, settings)
        responses = operation["responses"]
        responses.pop("422", None)
        for response in responses.values():
            headers = response.setdefault("headers", {})
            headers["x-request-id"] = {"$ref": "#/components/headers/RequestId"}
    _add_examples(schemas, settings)
    chars, count = guard_limits(settings)
    longest = longest_agent_message(settings)
    if "AgentChatRequest" in schemas:
        message = schemas["AgentChatRequest"]["properties"]["message"]
        message["maxLength"] = min(message.get("maxLength", chars), chars, longest or chars)
    if "TaskRequest" in schemas and "message" in schemas["TaskRequest"].get("properties", {}):
        # a task takes any message the input guard does: one too long for the agent's
        # context fails later, as the task
        message = schemas["TaskRequest"]["properties"]["message"]
        message["maxLength"] = min(message.get("maxLength", chars), chars)
    _bound_messages(schemas, chars, count)
    return schema


def guard_limits(settings: Settings) -> tuple[int, int]:
    """The longest text and the most messages every agent's input guard takes (the
    schema states the strictest; ``guard.input`` and ``agents.<name>.guard.input``)."""
    inputs = [settings.guard.input]
    inputs += [a.guard.input for a in settings.agents.values() if a.guard and a.guard.input]
    return min(i.max_message_chars for i in inputs), min(i.max_messages for i in inputs)


def _bound_messages(schemas: dict[str, Any], chars: int, count: int) -> None:
    """Messages, their text and their text parts no longer than the input guard takes."""
    request = schemas.get("ChatCompletionRequest", {}).get("properties", {})
    if "messages" in request:
        messages = request["messages"]
        messages["maxItems"] = min(messages.get("maxItems", count), count)
    for name, field in (("Message", "content"), ("ContentPart", "text")):
        prop = schemas.get(name, {}).get("properties", {}).get(field)
        if prop is None:
            continue
        for option in prop.get("anyOf", [prop]):
            if option.get("type") == "string":
                option["maxLength"] = min(option.get("maxLength", chars), chars)


def _operations(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path_item in schema.get("paths", {}).values():
        yield from path_item.values()


def _fit_security(operation: dict[str, Any], settings: Settings) -> None:
    """Without auth no key is asked for and no 401 sent; in localhost development mode
    the key is optional (it is still checked when sent)."""
    if "security" not in operation:
        return
    if not settings.auth.enabled:
        del operation["security"]
        operation["responses"].pop("401", None)
    elif settings.auth.allow_unauthenticated_localhost:
        operation["security"] = [*operation["security"], {}]


def _add_model_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    definition = model.model_json_schema(ref_template=_REF + "{model}")
    for name, nested in definition.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    schemas.setdefault(model.__name__, definition)


def _request_schemas(schema: dict[str, Any]) -> set[str]:
    """The components a request body can reach."""
    schemas = schema["components"]["schemas"]
    todo = [
        media["schema"]
        for operation in _operations(schema)
        for media in operation.get("requestBody", {}).get("content", {}).values()
    ]
    seen: set[str] = set()
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF):
                name = ref.removeprefix(_REF)
                if name not in seen and name in schemas:
                    seen.add(name)
                    todo.append(schemas[name])
            todo.extend(node.values())
    return seen


def _constrain_passed_fields(node: Any) -> None:
    """Unknown request fields are passed upstream: any JSON ``check_json_body`` lets by."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is True:
            node["additionalProperties"] = {"$ref": _REF + "JsonValue"}
        for value in node.values():
            _constrain_passed_fields(value)
    elif isinstance(node, list):
        for value in node:
            _constrain_passed_fields(value)


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_EXACT = {float(INT_MIN): INT_MIN, float(INT_MAX): INT_MAX}


def _exact_bounds(node: Any) -> None:
    """FastAPI's OpenAPI models hold bounds as floats, which makes the 64-bit limit
    2**64 - 1 into 2**64 (and schemathesis reads it as 18446744073709552000)."""
    if isinstance(node, dict):
        for key in _BOUNDS:
            value = node.get(key)
            if isinstance(value, float) and value in _EXACT:
                node[key] = _EXACT[value]
        for value in node.values():
            _exact_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _exact_bounds(value)


def longest_agent_message(settings: Settings) -> int | None:
    """The longest ``message`` every configured agent takes: longer ones are refused with
    400 ``context_length_exceeded`` by at least one (``AgentService.chat``)."""
    limits = []
    for agent in settings.agents.values():
        model = settings.models.get(agent.model)
        if model is None:
            continue
        limits.append(longest_message(agent, model))
    return min(limits) if limits else None


def _add_examples(schemas: dict[str, Any], settings: Settings) -> None:
    """The configured names as examples, so a request built from the schema can succeed."""
    models = [*settings.models, *(a for a in settings.agents if a not in settings.models)]
    for name in ("ChatCompletionRequest", "EmbeddingRequest"):
        if name in schemas and models:
            schemas[name]["properties"]["model"]["examples"] = models
    for name in ("AgentChatRequest", "TaskRequest"):
        if name in schemas:
            properties = schemas[name]["properties"]
            properties["message"]["examples"] = ["Hello"]
            if settings.agents:
                properties["agent"]["examples"] = list(settings.agents)
    if "ChatCompletionRequest" in schemas and models:
        hello = [{"role": "user", "content": "Hello"}]
        schemas["ChatCompletionRequest"]["examples"] = [
            {"model": models[0], "messages": hello},
            {
                "model": models[-1],
                "messages": hello,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ]
    if "BatchCreateRequest" in schemas:
        windows = list(settings.batches.completion_windows)
        schemas["BatchCreateRequest"]["properties"]["completion_window"] = {
            "type": "string", "enum": windows, "examples": windows[:1],
        }  # fmt: skip
    if "EmbeddingRequest" in schemas and models:
        schemas["EmbeddingRequest"]["examples"] = [{"model": models[0], "input": "Hello"}]
    if "RolloutStart" in schemas:
        properties = schemas["RolloutStart"]["properties"]
        change_types = list(settings.rollouts.change_types)
        properties["change_type"] = {**properties["change_type"], "enum": change_types,
                                     "examples": change_types[:1]}  # fmt: skip
        properties["agent"]["examples"] = list(settings.agents)[:1]
