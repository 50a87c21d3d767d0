"""Bounds on the request head (request line and headers): its size and the time it takes.

uvicorn parses the head before any ASGI middleware sees the request, and bounds neither:
httptools buffers a header value of any length (one 64 MB ``Authorization`` header took a
server from 115 to 380 MB of RSS, and seconds of CPU), and a client that sends its head a
byte at a time holds a connection for ever (slowloris). So the bounds live in the HTTP
protocol itself: a head over ``max_bytes`` gets 431, one not complete ``timeout_s`` after
its first byte gets 408, both in our JSON error format, and the connection is closed.
Bodies are bounded separately (``BodySizeLimitMiddleware``).

``header_limited_protocol(limits)`` is what ``guarita serve`` passes to ``uvicorn.run(http=...)``:
the httptools protocol when httptools is installed (uvicorn's own choice), else h11's.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import orjson
import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from guarita.api.coalesced_writes import coalesce_writes

HTTPTOOLS_INSTALLED = importlib.util.find_spec("httptools") is not None
# After a refusal the connection is half-closed and what the client still sends is read and
# dropped for this long, so that a client still writing its head reads the answer rather
# than a reset (closing with unread data sends RST, which can discard it).
LINGER_S = 2.0
# A head's size from its parsed parts: the request line "METHOD SP target SP HTTP/1.1 CRLF"
# is the method and target plus 12 bytes, the blank line that ends the head 2 more, and a
# header line "name: value CRLF" is the name and value plus 4.
_HEAD_OVERHEAD = 14
_HEADER_LINE_OVERHEAD = 4


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """The most bytes of request line and headers, and the longest wait for them; ``headers``
    go on the refusals too (the security headers every answer carries)."""

    max_bytes: int
    timeout_s: float
    headers: tuple[tuple[bytes, bytes], ...] = ()


def header_limited_protocol(limits: HeaderLimits) -> Callable[..., asyncio.Protocol]:
    """uvicorn's ``http=`` argument: a protocol factory it calls once per connection.

    A ``functools.partial`` of a module-level class pickles, so it also reaches the
    processes ``uvicorn.run(workers=N)`` spawns."""
    if HTTPTOOLS_INSTALLED:
        return functools.partial(HttpToolsHeaderLimits, limits=limits)
    return functools.partial(H11HeaderLimits, limits=limits)


def _refusal(
    status: HTTPStatus,
    code: str,
    message: str,
    request_id: str,
    defaults: list[tuple[bytes, bytes]],
) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    head = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()]
    head += [name + b": " + value + b"\r\n" for name, value in defaults]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-request-id: " + request_id.encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class _HeadGuard:
    """What both protocols share (mixed in before uvicorn's class): the head deadline and
    the refusals, 431 and 408.

    A refusal while an earlier pipelined response is still being written waits for it
    (``_after_response``); then the answer is written and the connection lingers closed."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    flow: FlowControl
    server_state: ServerState
    client: tuple[str, int] | None
    timeout_keep_alive_task: asyncio.TimerHandle | None

    def _init_guard(self, limits: HeaderLimits) -> None:
        self._limits = limits
        self._head_started: float | None = None  # loop time of the pending head's first byte
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered 431/408 (or about to): the rest is dropped
        self._deferred: tuple[HTTPStatus, str, str] | None = None

    # What each protocol answers from its own state.
    def _head_pending(self) -> bool:
        raise NotImplementedError

    def _head_bytes_received(self) -> bool:
        raise NotImplementedError

    def _response_in_flight(self) -> bool:
        cycle: Any = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_started = self.loop.time()  # a new connection: its first head's clock
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_guard_timers()
        super().connection_lost(exc)  # type: ignore[misc]

    def _start_head_timer(self) -> None:
        if self._head_timer is None and self._head_started is not None:
            deadline = self._head_started + self._limits.timeout_s
            self._head_timer = self.loop.call_at(deadline, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        self._head_started = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_guard_timers(self) -> None:
        self._stop_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._head_pending() or self._response_in_flight():
            return
        if not self._head_bytes_received():
            self.transport.close()  # never sent a byte: nothing to answer
            return
        self._refuse(
            HTTPStatus.REQUEST_TIMEOUT,
            "header_timeout",
            f"request line and headers not received within {self._limits.timeout_s:g} s",
        )

    def _refuse_too_large(self) -> None:
        self._refuse(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            f"request line and headers larger than the limit of {self._limits.max_bytes} bytes",
        )

    def _refuse(self, status: HTTPStatus, code: str, message: str) -> None:
        self._refused = True
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        if self._response_in_flight():
            self._deferred = (status, code, message)
            return
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        request_id = uuid.uuid4().hex
        defaults = [*self.server_state.default_headers, *self._limits.headers]
        self.transport.write(_refusal(status, code, message, request_id, defaults))
        structlog.get_logger("guarita.access").info(
            "request_refused",
            request_id=request_id,
            status=status.value,
            code=code,
            client=self.client[0] if self.client else None,
        )
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _after_response(self) -> None:
        if self._deferred is not None and not self._response_in_flight():
            status, code, message = self._deferred
            self._deferred = None
            self._refuse(status, code, message)


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a head that was refused."""


if HTTPTOOLS_INSTALLED:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeaderLimits(_HeadGuard, HttpToolsProtocol):
        """httptools buffers a header of any size inside the parser, where no callback
        sees it, so bytes are counted before they reach the parser: at most ``max_bytes``
        of a head are fed, and if the head is not complete by then it is refused. That count
        starts at a read; a pipelined head that starts inside a read is counted again from
        its parsed parts once complete, which catches what the first count missed."""

        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
            *,
            limits: HeaderLimits,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._init_guard(limits)
            self._reading_head = True  # the next bytes are a request head
            self._head_bytes = 0  # bytes of it counted so far
            self._heads_done = 0

        def _head_pending(self) -> bool:
            return self._reading_head

        def _head_bytes_received(self) -> bool:
            return self._head_bytes > 0

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            self._unset_keepalive_if_required()
            # The clock starts at a head's first byte, but not while an earlier answer is still
            # being written (pipelining): then the wait is ours, and it starts at the next read.
            if self._reading_head and self._head_started is None and not self._response_in_flight():
                self._head_started = self.loop.time()
            limit = self._limits.max_bytes
            while self._reading_head and len(data) > limit - self._head_bytes:
                room = limit - self._head_bytes
                heads_done = self._heads_done
                self._head_bytes = limit
                if not self._feed(data[:room]):
                    return
                if self._heads_done == heads_done:
                    self._refuse_too_large()
                    return
                data = data[room:]
            if self._reading_head:
                self._head_bytes += len(data)
            if self._feed(data) and self._reading_head:
                self._start_head_timer()

        def _feed(self, data: bytes) -> bool:
            """Parse ``data``; False when the connection is done with (refused, upgraded, bad)."""
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if not self._refused:
                    msg = "Invalid HTTP request received."
                    self.logger.warning(msg)
                    self.send_400_response(msg)
                return False
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return False
            return not self.transport.is_closing()

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._heads_done += 1
            self._head_bytes = 0
            self._stop_head_timer()
            size = len(self.parser.get_method()) + len(self.url) + _HEAD_OVERHEAD
            for name, value in self.headers:
                size += len(name) + len(value) + _HEADER_LINE_OVERHEAD
            if size > self._limits.max_bytes:
                self._refuse_too_large()
                raise _HeadRefused  # stops the parser: nothing of this request runs
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before:  # a request to answer (not an upgrade)
                coalesce_writes(self.cycle, self.transport, self.loop)

        def on_message_complete(self) -> None:
            self._reading_head = True
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._after_response()


class _LimitedH11Connection(h11.Connection):
    """h11 refuses an incomplete head over its buffer limit itself (431 is its hint), but
    one that arrives whole in a single read passes; this checks each parsed head too and
    keeps the status hint of the last error for the protocol's answer."""

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.error_status_hint: int | None = None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status_hint = exc.error_status_hint
            raise
        if isinstance(event, h11.Request):
            size = len(event.method) + len(event.target) + _HEAD_OVERHEAD
            for name, value in event.headers.raw_items():
                size += len(name) + len(value) + _HEADER_LINE_OVERHEAD
            if size > self.max_head_bytes:
                self.error_status_hint = 431
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event


class H11HeaderLimits(_HeadGuard, H11Protocol):
    """The same bounds for uvicorn's h11 protocol (used when httptools is not installed)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HeaderLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._init_guard(limits)
        self._limited_conn = _LimitedH11Connection(limits.max_bytes)
        self.conn = self._limited_conn

    def _head_pending(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _head_bytes_received(self) -> bool:
        return bool(self.conn.trailing_data[0])

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._head_started is None and self._head_pending() and not self._response_in_flight():
            self._head_started = self.loop.time()
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._head_pending():
            self._start_head_timer()
        else:
            self._stop_head_timer()

    def send_400_response(self, msg: str) -> None:
        if self._limited_conn.error_status_hint == 431:
            self._refuse_too_large()
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._after_response()
