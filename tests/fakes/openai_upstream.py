"""A local server speaking OpenAI's documented chat-completions wire format.

Hosted OpenAI cannot be reached from the test machine, so provider and gateway tests talk
to this instead. The requested ``model`` picks the behaviour:

    fail-401 / fail-429 / fail-500 / fail-400   answer with that status (429 has Retry-After: 7)
    fail-context                                400 "maximum context length" (code
                                                context_length_exceeded), as OpenAI does
    slow                                        sleep 3 s before answering
    garbage                                     200 with a body that is not JSON
    stream-break                                (stream) two chunks, then the connection drops
    stream-cut                                  (stream) two chunks, then a clean end with no
                                                finish reason and no [DONE]
    reasoner                                    answers with ``reasoning_content`` and one
                                                tool call (``lookup``, arguments
                                                ``{"q": <last user text>}``); streamed as
                                                deltas, the arguments in two fragments
    anything else                               "upstream says: <last user text>"

``GET /_last`` returns the last request body and headers received, for assertions.
With ``FAKE_REQUIRE_KEY`` set, requests without ``Authorization: Bearer <that key>`` get 401.

Fault injection for drills, whatever the model (``POST /_control`` with a JSON object; the
fields given replace the current ones):

    fail_rate: 0..1   answer 500 to that share of API calls, decided by a seeded RNG
    seed: int         reseed that RNG (default 0), so a run's failure sequence repeats
    down: bool        answer 503 to every API call (and to ``/_health``)
    delay_ms: float   wait this long before answering an API call
    reset: bool       zero the counters of ``GET /_stats``

``GET /_stats`` counts the API calls received: ``calls``, ``failed`` (injected 500s),
``down`` (503s while down) and ``answered``; ``in_flight`` and ``max_in_flight`` are the
calls being answered now and the most there were at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

LAST: dict[str, Any] = {}
CONTROL: dict[str, Any] = {"fail_rate": 0.0, "down": False, "delay_ms": 0.0}
STATS: dict[str, int] = {
    "calls": 0,
    "failed": 0,
    "down": 0,
    "answered": 0,
    "in_flight": 0,
    "max_in_flight": 0,
}
RNG = random.Random(0)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "fake_error", "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _text_of(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else ""


async def _injected_fault() -> Response | None:
    """What ``/_control`` asks for: a delay, then maybe a 503 (down) or a 500 (fail_rate)."""
    STATS["calls"] += 1
    if CONTROL["delay_ms"] > 0:
        await asyncio.sleep(CONTROL["delay_ms"] / 1000)
    if CONTROL["down"]:
        STATS["down"] += 1
        return _error(503, "fake upstream is down")
    if CONTROL["fail_rate"] > 0 and RNG.random() < CONTROL["fail_rate"]:
        STATS["failed"] += 1
        return _error(500, "fake injected failure")
    STATS["answered"] += 1
    return None


def counted(handler: Callable[[Request], Awaitable[Response]]) -> Any:
    """Count the calls in flight (``in_flight``, ``max_in_flight``) around ``handler``."""

    async def wrapper(request: Request) -> Response:
        STATS["in_flight"] += 1
        STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
        try:
            return await handler(request)
        finally:
            STATS["in_flight"] -= 1

    return wrapper


async def chat(request: Request) -> Response:
    body = await request.json()
    LAST.clear()
    LAST.update(body=body, headers=dict(request.headers))
    required = os.environ.get("FAKE_REQUIRE_KEY")
    if required and request.headers.get("authorization") != f"Bearer {required}":
        return _error(401, "Incorrect API key provided")
    fault = await _injected_fault()
    if fault is not None:
        return fault
    model = body.get("model", "")
    if model == "fail-context":
        message = (
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages."
        )
        return JSONResponse(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            status_code=400,
        )
    if model.startswith("fail-"):
        status = int(model.split("-")[1])
        headers = {"retry-after": "7"} if status == 429 else None
        return _error(status, f"fake failure {status}", headers)
    if model == "slow":
        await asyncio.sleep(3)
    if model == "garbage":
        return Response(b"<html>not json</html>", media_type="text/html")
    text = "upstream says: " + _text_of(body.get("messages", []))
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(text.split()),
        "total_tokens": prompt + len(text.split()),
    }
    if model == "reasoner":
        return _reasoner(body, usage)
    if body.get("stream"):
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _stream(model, text, usage, include), media_type="text/event-stream"
        )
    return JSONResponse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )


REASONING = "The user wants a lookup; their card 4111 1111 1111 1111 is on file."


def _reasoner(body: dict[str, Any], usage: dict[str, int]) -> Response:
    """A reasoning model's answer: its reasoning, a short text and a tool call."""
    arguments = orjson.dumps({"q": _text_of(body.get("messages", []))}).decode()
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    if not body.get("stream"):
        call["function"]["arguments"] = arguments
        message = {"role": "assistant", "content": "Looking it up.",
                   "reasoning_content": REASONING, "tool_calls": [call]}  # fmt: skip
        return JSONResponse({"id": "chatcmpl-fake", "object": "chat.completion",
                             "created": int(time.time()), "model": "reasoner",
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": "tool_calls"}],
                             "usage": usage})  # fmt: skip

    async def events() -> AsyncIterator[bytes]:
        half = len(arguments) // 2
        deltas = [
            {"role": "assistant", "content": ""},
            {"reasoning_content": REASONING[:20]},
            {"reasoning_content": REASONING[20:]},
            {"content": "Looking it up."},
            {"tool_calls": [{"index": 0, **call}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
        ]
        for i, delta in enumerate(deltas):
            reason = "tool_calls" if i == len(deltas) - 1 else None
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "model": "reasoner",
                "created": int(time.time()),
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _stream(
    model: str, text: str, usage: dict[str, int], include_usage: bool
) -> AsyncIterator[bytes]:
    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    yield event(
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    )
    for i, word in enumerate(text.split(" ")):
        if model == "stream-break" and i == 2:
            raise ConnectionResetError("fake upstream dropped the stream")
        if model == "stream-cut" and i == 2:
            return
        yield event(
            [
                {
                    "index": 0,
                    "delta": {"content": word if i == 0 else " " + word},
                    "finish_reason": None,
                }
            ]
        )
    yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        yield event([], usage=usage)
    yield b"data: [DONE]\n\n"


async def embeddings(request: Request) -> Response:
    body = await request.json()
    LAST.clear()
    LAST.update(body=body, headers=dict(request.headers))
    fault = await _injected_fault()
    if fault is not None:
        return fault
    if body.get("model") == "garbage":  # 200, but not an embeddings answer
        return JSONResponse({"object": "chat.completion", "choices": [], "data": "nope"})
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.5]}
        for i, t in enumerate(inputs)
    ]
    tokens = sum(len(t.split()) for t in inputs)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def last(_request: Request) -> Response:
    return JSONResponse(LAST)


async def health(_request: Request) -> Response:
    if CONTROL["down"]:
        return _error(503, "fake upstream is down")
    return JSONResponse({"ok": True})


async def control(request: Request) -> Response:
    body = await request.json()
    if not isinstance(body, dict):
        return _error(400, "send a JSON object")
    if "fail_rate" in body:
        CONTROL["fail_rate"] = min(1.0, max(0.0, float(body["fail_rate"])))
    if "down" in body:
        CONTROL["down"] = bool(body["down"])
    if "delay_ms" in body:
        CONTROL["delay_ms"] = max(0.0, float(body["delay_ms"]))
    if "seed" in body or "fail_rate" in body:
        RNG.seed(int(body.get("seed", 0)))
    if body.get("reset"):
        for name in STATS:
            if name != "in_flight":
                STATS[name] = 0
    return JSONResponse(CONTROL)


async def stats(_request: Request) -> Response:
    return JSONResponse(STATS)


app = Starlette(
    routes=[
        Route("/v1/chat/completions", counted(chat), methods=["POST"]),
        Route("/v1/embeddings", counted(embeddings), methods=["POST"]),
        Route("/_last", last),
        Route("/_health", health),
        Route("/_control", control, methods=["POST"]),
        Route("/_stats", stats),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
