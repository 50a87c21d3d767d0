"""Plain ASGI middleware for HTTP-level concerns: request ids, the per-request log line
and latency metric, security headers, and the request body size limit."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

import orjson
import structlog
from opentelemetry import propagate, trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guarita.api.security_headers import SecurityHeaders
from guarita.errors import GuaritaError, PayloadTooLarge
from guarita.settings import ServerSettings
from guarita.store.models import REQUEST_ID_MAX
from guarita.telemetry.metrics import Metrics
from guarita.types import RequestContext

REQUEST_ID_HEADER = b"x-request-id"
_QUIET_PATHS = frozenset({"/health", "/metrics"})


def _valid_request_id(value: bytes) -> bool:
    return 0 < len(value) <= REQUEST_ID_MAX and all(33 <= b < 127 for b in value)


class RequestContextMiddleware:
    """Accept or make the request id, echo it with the security headers, time the request
    and log one JSON line."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        tracer: trace.Tracer | None = None,
        security: SecurityHeaders | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer
        self.security = security or SecurityHeaders.from_settings(ServerSettings())
        self.log = structlog.get_logger("guarita.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tracer is None:
            await self._serve(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self.tracer.start_as_current_span(
            f"{scope['method']} {scope['path']}",
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
        ) as span:
            status = await self._serve(scope, receive, send)
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("guarita.request_id", scope["state"]["context"].request_id)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Handle one request; returns the status sent."""
        started = time.perf_counter()
        request_id = b""
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = value
                break
        if not _valid_request_id(request_id):
            request_id = secrets.token_hex(16).encode()
        context = RequestContext(request_id.decode())
        scope.setdefault("state", {})["context"] = context
        status = 500
        response_started = False
        security = self.security
        path = scope["path"]

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", ()))
                headers.append((REQUEST_ID_HEADER, request_id))
                security.add_to(path, headers)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # Starlette would answer this 500 outside this middleware (no request id, no
            # security headers) and re-raise, which makes the server drop the connection.
            if response_started:
                raise
            if not isinstance(exc, GuaritaError):
                self.log.exception(
                    "unhandled_error",
                    request_id=context.request_id,
                    path=scope["path"],
                    error_type=type(exc).__name__,
                )
                exc = GuaritaError("internal error; see the server log for this request id")
            await _send_error(send_with_headers, exc)
        finally:
            self._finish(scope, context, status, started)
        return status

    def _finish(self, scope: Scope, context: RequestContext, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", "unmatched")
        m = self.metrics
        m.child(m.http_duration, template, scope["method"], str(status)).observe(elapsed)
        path = scope["path"]
        if path in _QUIET_PATHS:
            return
        fields = context.log_fields()
        fields["method"] = scope["method"]
        fields["path"] = path
        fields["status"] = status
        fields["duration_ms"] = round(elapsed * 1000, 3)
        self.log.info("request", **fields)


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes``: by Content-Length at once, else while reading.
    ``paths`` gives some paths limits of their own (file uploads)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, paths: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.paths.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > max_bytes:
                    await self._reject(send, max_bytes)
                    return
                break
        seen = 0
        too_large = started = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    too_large = True
                    raise PayloadTooLarge(_too_large(max_bytes))
            return message

        async def checked_send(message: Message) -> None:
            # FastAPI turns any error while reading the body into a 400 "error parsing the
            # body"; the 413 is sent instead of whatever answer follows an overflow.
            nonlocal started
            if too_large and not started:
                if message["type"] == "http.response.start":
                    await self._reject(send, max_bytes)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, checked_send)

    async def _reject(self, send: Send, max_bytes: int) -> None:
        await _send_error(send, PayloadTooLarge(_too_large(max_bytes)))


def _too_large(max_bytes: int) -> str:
    return f"request body larger than the limit of {max_bytes} bytes"


async def _send_error(send: Send, exc: GuaritaError) -> None:
    body = orjson.dumps(exc.to_body())
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in exc.headers().items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
