"""A local server speaking Anthropic's documented Messages API wire format.

Hosted Anthropic cannot be reached from the test machine, so provider and gateway tests
talk to this instead. Like the real API it checks what a request must carry:

    x-api-key            any non-empty key, or exactly ``FAKE_REQUIRE_KEY`` when that is set
                         (else 401 ``authentication_error``)
    anthropic-version    required (else 400 ``invalid_request_error``)
    max_tokens           required (else 400 ``invalid_request_error``)
    messages             roles ``user``/``assistant`` only: the system prompt goes in the
                         top-level ``system`` field (else 400)
    top-level fields     only those the Messages API defines (else 400 "Extra inputs are
                         not permitted"), so OpenAI-only fields such as ``stop`` are refused

The answer is ``"anthropic says: <last user text>"``, cut at the first of
``stop_sequences`` (``stop_reason: "stop_sequence"``) or at ``max_tokens`` words
(``stop_reason: "max_tokens"``). Tokens are counted as whitespace-separated words:
``input_tokens`` over ``system`` and every message, ``output_tokens`` over the answer.

With ``"stream": true`` the answer comes as the documented server-sent events:
``message_start`` → ``content_block_start`` → ``ping`` → ``content_block_delta``
(one ``text_delta`` a word) … → ``content_block_stop`` → ``message_delta``
(``stop_reason``, ``usage.output_tokens``) → ``message_stop``.

The requested ``model`` picks a failure:

    fail-529        529 ``overloaded_error``
    fail-429        429 ``rate_limit_error`` with ``retry-after: 3``
    fail-500        500 ``api_error``
    stream-error    (stream) two text deltas, then an ``event: error`` (overloaded_error)
    thinker         a ``thinking`` block and a ``tool_use`` block (``lookup``) before the
                    text (stream: ``thinking_delta``, ``input_json_delta`` in two pieces)

``GET /_last`` returns the last request body and headers received, for assertions.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

LAST: dict[str, Any] = {}

# The top-level fields of a Messages API request; the real API refuses any other.
KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
    }
)
FAILURES: dict[str, tuple[int, str]] = {
    "fail-529": (529, "overloaded_error"),
    "fail-429": (429, "rate_limit_error"),
    "fail-500": (500, "api_error"),
}


def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _text(content: Any) -> str:
    """The text of a content field: a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _invalid(body: Any) -> str | None:
    """Why the real API would refuse this body with 400, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for name in body:
        if name not in KNOWN_FIELDS:
            return f"{name}: Extra inputs are not permitted"
    if not body.get("model"):
        return "model: Field required"
    if "max_tokens" not in body:
        return "max_tokens: Field required"
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return "max_tokens: must be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f'messages.{i}.role: Input should be "user" or "assistant"'
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        return "stop_sequences: Input should be a valid list of strings"
    return None


def _answer(body: dict[str, Any]) -> tuple[str, str, str | None, int]:
    """The answer text, its stop reason, the stop sequence met, and the input tokens."""
    messages = body["messages"]
    users = [m for m in messages if m.get("role") == "user"]
    text = "anthropic says: " + (_text(users[-1].get("content")) if users else "")
    stop_reason, stop_sequence = "end_turn", None
    for stop in body.get("stop_sequences") or ():
        if stop and stop in text:
            text, stop_reason, stop_sequence = text[: text.index(stop)], "stop_sequence", stop
            break
    words = text.split(" ")
    if len(words) > body["max_tokens"]:
        text, stop_reason = " ".join(words[: body["max_tokens"]]), "max_tokens"
    system = _text(body.get("system"))
    input_tokens = len(system.split()) + sum(len(_text(m.get("content")).split()) for m in messages)
    return text, stop_reason, stop_sequence, input_tokens


async def messages(request: Request) -> Response:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    LAST.clear()
    LAST.update(body=body, headers=dict(request.headers))
    required = os.environ.get("FAKE_REQUIRE_KEY")
    key = request.headers.get("x-api-key", "")
    if not key or (required and key != required):
        return _error(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return _error(400, "invalid_request_error", "anthropic-version: header is required")
    problem = _invalid(body)
    if problem is not None:
        return _error(400, "invalid_request_error", problem)
    model = body["model"]
    if model in FAILURES:
        status, kind = FAILURES[model]
        headers = {"retry-after": "3"} if status == 429 else None
        return _error(status, kind, f"fake failure {status}", headers)
    text, stop_reason, stop_sequence, input_tokens = _answer(body)
    msg_id = "msg_" + uuid.uuid4().hex[:24]
    if model == "thinker":
        return _thinker(msg_id, body, text, input_tokens)
    if body.get("stream"):
        return StreamingResponse(
            _stream(msg_id, model, text, stop_reason, stop_sequence, input_tokens),
            media_type="text/event-stream",
        )
    return JSONResponse(
        {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": input_tokens, "output_tokens": len(text.split())},
        }
    )


THINKING = "Mail them at canary.person@example.com, IBAN DE89 3704 0044 0532 0130 00."


def _thinker(msg_id: str, body: dict[str, Any], text: str, input_tokens: int) -> Response:
    """A message with extended thinking and a tool call, as the Messages API sends one."""
    tool = {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "lookup",
        "input": {"cpf": "529.982.247-25"},
    }
    usage = {"input_tokens": input_tokens, "output_tokens": len(text.split())}
    if not body.get("stream"):
        content = [{"type": "thinking", "thinking": THINKING, "signature": "sig"},
                   {"type": "text", "text": text}, tool]  # fmt: skip
        return JSONResponse({"id": msg_id, "type": "message", "role": "assistant",
                             "model": "thinker", "content": content, "stop_reason": "tool_use",
                             "stop_sequence": None, "usage": usage})  # fmt: skip
    arguments = orjson.dumps(tool["input"]).decode()

    async def events() -> AsyncIterator[bytes]:
        message = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "thinker",
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        yield _event("message_start", {"type": "message_start", "message": message})
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
            ({"type": "thinking", "thinking": ""},
             [{"type": "thinking_delta", "thinking": THINKING[:15]},
              {"type": "thinking_delta", "thinking": THINKING[15:]},
              {"type": "signature_delta", "signature": "sig"}]),
            ({"type": "text", "text": ""}, [{"type": "text_delta", "text": text}]),
            ({**tool, "input": {}},
             [{"type": "input_json_delta", "partial_json": arguments[:7]},
              {"type": "input_json_delta", "partial_json": arguments[7:]}]),
        ]  # fmt: skip
        for index, (block, deltas) in enumerate(blocks):
            yield _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
            for delta in deltas:
                yield _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
        yield _event(
            "message_delta",
            {
                "type": "message_delta",
                "usage": usage,
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            },
        )
        yield _event("message_stop", {"type": "message_stop"})

    return StreamingResponse(events(), media_type="text/event-stream")


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(
    msg_id: str,
    model: str,
    text: str,
    stop_reason: str,
    stop_sequence: str | None,
    input_tokens: int,
) -> AsyncIterator[bytes]:
    yield _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            },
        },
    )
    yield _event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield _event("ping", {"type": "ping"})
    for i, word in enumerate(text.split(" ")):
        if model == "stream-error" and i == 2:
            yield _event(
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            )
            return
        yield _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
            },
        )
    yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": len(text.split())},
        },
    )
    yield _event("message_stop", {"type": "message_stop"})


async def last(_request: Request) -> Response:
    return JSONResponse(LAST)


async def health(_request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/_last", last),
        Route("/_health", health),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
