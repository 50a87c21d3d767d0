"""The request-context middleware alone (request id, security headers, metrics; the log
line is off: /health is a quiet path), over a trivial ASGI app: microseconds per request.

    .venv/bin/python bench/edge_headers.py
    PYTHONPATH=/tmp/rev/src .venv/bin/python bench/edge_headers.py   # another revision
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import time
from typing import Any

from guarita.api.middleware import RequestContextMiddleware
from guarita.telemetry.metrics import Metrics

REQUESTS = 20_000
ROUNDS = 7


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def send(message: dict[str, Any]) -> None:
    return None


async def main() -> None:
    middleware = RequestContextMiddleware(app, metrics=Metrics())
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(REQUESTS):
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/health",
                "headers": [(b"host", b"x"), (b"authorization", b"Bearer k")],
            }
            await middleware(scope, receive, send)
        rounds.append((time.perf_counter() - started) / REQUESTS * 1e6)
    headers = (
        "security"
        if "security" in inspect.signature(RequestContextMiddleware).parameters
        else "old"
    )
    print(f"{headers}: median {statistics.median(rounds):.2f} us/request, min {min(rounds):.2f}")


asyncio.run(main())
