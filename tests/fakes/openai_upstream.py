"""A local server speaking OpenAI's documented chat-completions wire format.

Hosted OpenAI cannot be reached from the test machine, so provider and gateway tests talk
to this instead. The requested ``model`` picks the behaviour:

    fail-401 / fail-429 / fail-500 / fail-400   answer with that status (429 has Retry-After: 7)
    slow                                        sleep 3 s before answering
    garbage                                     200 with a body that is not JSON
    stream-break                                (stream) two chunks, then the connection drops
    anything else                               "upstream says: <last user text>"

``GET /_last`` returns the last request body and headers received, for assertions.
With ``FAKE_REQUIRE_KEY`` set, requests without ``Authorization: Bearer <that key>`` get 401.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

LAST: dict[str, Any] = {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "fake_error", "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _text_of(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else ""


async def chat(request: Request) -> Response:
    body = await request.json()
    LAST.clear()
    LAST.update(body=body, headers=dict(request.headers))
    required = os.environ.get("FAKE_REQUIRE_KEY")
    if required and request.headers.get("authorization") != f"Bearer {required}":
        return _error(401, "Incorrect API key provided")
    model = body.get("model", "")
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
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/_last", last),
        Route("/_health", health),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
