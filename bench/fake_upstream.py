"""A fake OpenAI-compatible upstream for gateway benchmarks.

Written on raw asyncio streams with a hand-parsed HTTP/1.1 subset (keep-alive,
``Content-Length`` bodies) rather than a web framework, so that the upstream costs as
little CPU as possible (it shares the machine with the gateway and the load generator) and
its latency is the fixed delay plus almost nothing: "upstream alone" is then a fair floor.

Routes:
    POST /v1/chat/completions   a valid ``chat.completion`` (with ``usage``) after --delay-ms
    GET  /health                ``{"status":"ok"}`` at once
    anything else               404 (405 for a wrong method, 411 for a chunked body)

Run: ``python bench/fake_upstream.py --port 9100 --delay-ms 20``. Uses uvloop when it is
installed (as uvicorn does for the gateway), unless ``--no-uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import time

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    411: b"Length Required",
    413: b"Payload Too Large",
}

# The answer is a fixed template: only the id and the timestamp change per request, so
# building it is a couple of string operations (no JSON encoding on the hot path).
_COMPLETION = (
    '{{"id":"chatcmpl-bench{n}","object":"chat.completion","created":{created},'
    '"model":"bench-upstream","system_fingerprint":"fp_bench",'
    '"choices":[{{"index":0,"message":{{"role":"assistant",'
    '"content":"Hello! This is the benchmark upstream answering."}},'
    '"logprobs":null,"finish_reason":"stop"}}],'
    '"usage":{{"prompt_tokens":21,"completion_tokens":9,"total_tokens":30}}}}'
)
_HEALTH = b'{"status":"ok"}'
_ERROR = '{{"error":{{"message":"{message}","type":"invalid_request_error","code":null}}}}'


class BadRequest(Exception):
    """The bytes on the connection are not a request we can answer; close after replying."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def response(status: int, body: bytes, *, keep_alive: bool) -> bytes:
    """One complete HTTP/1.1 response with a JSON body."""
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n"
        b"connection: %s\r\n\r\n"
    ) % (
        status,
        _REASONS.get(status, b"Error"),
        len(body),
        b"keep-alive" if keep_alive else b"close",
    )
    return head + body


def error_body(message: str) -> bytes:
    return _ERROR.format(message=message).encode()


def parse_head(head: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes]]:
    """(method, target, version, lower-cased headers) of a request head without its CRLFCRLF."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(400, "malformed request line")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


def wants_keep_alive(version: bytes, headers: dict[bytes, bytes]) -> bool:
    connection = headers.get(b"connection", b"").lower()
    if version == b"HTTP/1.0":
        return connection == b"keep-alive"
    return connection != b"close"


class FakeUpstream:
    """Serves connections; each handles its requests one after another (no pipelining)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.counter = itertools.count(1)
        self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent an oversized head: nothing to answer
        except asyncio.CancelledError:
            # Shutdown cancels connections that are mid-delay. This task ends here either
            # way; ending it normally spares the traceback Python 3.11's stream callback
            # prints for every cancelled connection task.
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return False  # clean close between requests
        try:
            status, body, keep_alive = await self._route(reader, head[:-4])
        except BadRequest as exc:
            status, body, keep_alive = exc.status, error_body(str(exc)), False
        writer.write(response(status, body, keep_alive=keep_alive))
        await writer.drain()
        self.served += 1
        return keep_alive

    async def _route(self, reader: asyncio.StreamReader, head: bytes) -> tuple[int, bytes, bool]:
        method, target, version, headers = parse_head(head)
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            raise BadRequest(411, "chunked request bodies are not supported; send Content-Length")
        length_value = headers.get(b"content-length", b"0")
        if not length_value.isdigit():
            raise BadRequest(400, "invalid Content-Length")
        length = int(length_value)
        if length > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large")
        if length:
            await reader.readexactly(length)  # the body is not needed to answer
        keep_alive = wants_keep_alive(version, headers)
        path = target.split(b"?", 1)[0]
        if path == b"/v1/chat/completions":
            if method != b"POST":
                return 405, error_body("use POST"), keep_alive
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            body = _COMPLETION.format(n=next(self.counter), created=int(time.time()))
            return 200, body.encode(), keep_alive
        if path == b"/health":
            if method != b"GET":
                return 405, error_body("use GET"), keep_alive
            return 200, _HEALTH, keep_alive
        return 404, error_body("no such route"), keep_alive


async def serve(host: str, port: int, delay_s: float) -> None:
    """Serve until SIGINT or SIGTERM."""
    upstream = FakeUpstream(delay_s)
    server = await asyncio.start_server(
        upstream.handle, host, port, limit=MAX_HEADER_BYTES, backlog=1024, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://{host}:{port} (delay {delay_s * 1000:g} ms)", flush=True)
    async with server:
        await stop.wait()
    print(f"fake upstream stopped after {upstream.served} responses", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="answer delay (default 20)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = parser.parse_args()
    coro = serve(args.host, args.port, args.delay_ms / 1000)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


if __name__ == "__main__":
    main()
