"""Request-head bounds against a real ``guarita serve`` process, over raw sockets.

A head (request line and headers) over ``server.max_header_bytes`` gets 431 and one not
complete within ``server.header_timeout_s`` gets 408, both in OpenAI's error format and
followed by the server closing the connection; a 64 MB header costs the server no memory;
heads within the limit, keep-alive, pipelining, streaming and large bodies work as before.

One server per HTTP implementation, for the module: ``scripted`` model, a 16 KiB head limit
and a 1 s head timeout. ``guarita serve`` uses httptools; the h11 protocol (uvicorn's when
httptools is not installed) is served by the same app through ``uvicorn.run``.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import GuaritaServer, Process, wait_until

MAX_HEAD = 16_384
HEAD_TIMEOUT_S = 1
CONFIG: dict[str, Any] = {
    "models": {"m": {"provider": "scripted"}},
    "agents": {"a": {"model": "m"}},
    "default_agent": "a",
    "server": {"max_header_bytes": MAX_HEAD, "header_timeout_s": HEAD_TIMEOUT_S},
    # The large-body test sends one 2 MB message: over the input guard's default
    # per-message limit (10,000 characters), which is tested in tests/pipeline/test_guard.py.
    "guard": {"input": {"max_message_chars": 4 * 1024 * 1024}},
}
# Every wait on the server is bounded by this socket timeout (a deadline, not a measurement).
DEADLINE_S = 20.0
MAX_RSS_GROWTH = 30 * 1024 * 1024


H11_SERVE = """
import functools, sys, uvicorn
from guarita.api.http_limits import H11HeaderLimits, HeaderLimits
from guarita.app import app_from_environment
from guarita.settings import load_settings

server = load_settings().server
limits = HeaderLimits(server.max_header_bytes, server.header_timeout_s)
uvicorn.run(
    app_from_environment(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
    access_log=False, http=functools.partial(H11HeaderLimits, limits=limits),
)
"""


def start_on_h11(server: GuaritaServer) -> None:
    process = Process(
        [sys.executable, "-c", H11_SERVE, str(server.port)],
        env=server.env,
        log_path=server.workdir / "server.log",
    )
    server.process = process
    process.start()

    def up() -> bool:
        assert process.running(), f"server exited early:\n{process.output()}"
        return httpx.get(server.base_url + "/ready", timeout=2).status_code == 200

    wait_until(up, timeout=90, what=f"{server.base_url}/ready on h11")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server_and_key(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GuaritaServer, str]]:
    server = GuaritaServer(tmp_path_factory.mktemp(f"http-limits-{request.param}"), CONFIG)
    key = server.create_key("http-limits", "admin")  # no max_tokens cap: echoes 2 MB back
    if request.param == "httptools":
        server.start()
    else:
        start_on_h11(server)
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def server(server_and_key: tuple[GuaritaServer, str]) -> GuaritaServer:
    return server_and_key[0]


@pytest.fixture(scope="module")
def client(server_and_key: tuple[GuaritaServer, str]) -> Iterator[httpx.Client]:
    server, key = server_and_key
    with httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=60
    ) as c:
        yield c


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The OpenAI error object, checked to be exactly that."""
        assert self.headers["content-type"] == "application/json", self.headers
        assert self.headers.get("x-request-id"), self.headers
        body = json.loads(self.body)
        assert set(body) == {"error"}, body
        error: dict[str, Any] = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["type"] == "invalid_request_error" and error["param"] is None, error
        return error


class RawConnection:
    """One TCP connection speaking HTTP/1.1 by hand, reading answers one at a time."""

    def __init__(self, server: GuaritaServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more; False at end of stream (a reset counts: the server closed)."""
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65_536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed before an answer: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed inside a body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(int(status_line.split()[1]), headers, body)

    def read_until_closed(self) -> bytes:
        """What the server sends until it closes the connection (within the deadline)."""
        while self._fill():
            pass
        return self.buffer

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection, sending nothing more first."""
        return self.read_until_closed() == b""

    def readable(self, timeout: float) -> bool:
        return bool(select.select([self.sock], [], [], timeout)[0])


def get(path: str = "/health", *headers: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: t\r\n" + b"".join(headers) + b"\r\n"


def head_of_size(size: int) -> bytes:
    """A GET /health whose request line and headers, blank line included, are ``size`` bytes."""
    bare = get("/health", b"x-pad: \r\n")
    return get("/health", b"x-pad: " + b"p" * (size - len(bare)) + b"\r\n")


def assert_refused(conn: RawConnection, status: int, code: str) -> None:
    response = conn.response()
    assert response.status == status, response
    assert response.headers["connection"] == "close"
    assert response.error()["code"] == code
    assert conn.closed_by_server()


def assert_healthy(server: GuaritaServer) -> None:
    assert server.process is not None and server.process.running(), server.logs()
    with RawConnection(server) as conn:
        conn.send(get("/health"))
        response = conn.response()
    assert response.status == 200 and json.loads(response.body) == {"status": "ok"}


# -- too large: 431 -----------------------------------------------------------------------


def test_one_header_over_the_limit_gets_431_and_the_connection_closed(
    server: GuaritaServer,
) -> None:
    with RawConnection(server) as conn:
        conn.send(get("/health", b"x-big: " + b"b" * (MAX_HEAD + 1) + b"\r\n"))
        assert_refused(conn, 431, "headers_too_large")
    assert_healthy(server)


def test_many_small_headers_over_the_limit_get_431(server: GuaritaServer) -> None:
    headers = [b"x-small-%03d: %s\r\n" % (i, b"s" * 80) for i in range(MAX_HEAD // 90 + 10)]
    assert all(len(header) < 100 for header in headers)
    with RawConnection(server) as conn:
        conn.send(get("/health", *headers))
        assert_refused(conn, 431, "headers_too_large")
    assert_healthy(server)


@pytest.mark.parametrize("pieces", [1, 7], ids=["one-write", "seven-writes"])
def test_a_head_one_byte_over_the_limit_gets_431(server: GuaritaServer, pieces: int) -> None:
    data = head_of_size(MAX_HEAD + 1)
    step = len(data) // pieces + 1
    with RawConnection(server) as conn:
        for start in range(0, len(data), step):
            conn.send(data[start : start + step])
        assert_refused(conn, 431, "headers_too_large")


def test_a_64_mb_authorization_header_costs_the_server_no_memory(server: GuaritaServer) -> None:
    assert server.process is not None and server.process.proc is not None
    process = psutil.Process(server.process.proc.pid)
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with RawConnection(server) as conn:
            try:
                conn.send(b"GET /v1/models HTTP/1.1\r\nhost: t\r\nauthorization: Bearer ")
                block = b"k" * (1 << 20)
                for _ in range(64):
                    conn.send(block)
                conn.send(b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may close before the client has sent it all
            answer = conn.read_until_closed()
    finally:
        done.set()
        watcher.join()
    if answer:  # it may be lost to a reset; when it arrived, it is the 431
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert peak - baseline < MAX_RSS_GROWTH, f"RSS grew by {(peak - baseline) / 2**20:.1f} MiB"
    assert_healthy(server)


# -- too slow: 408 ------------------------------------------------------------------------


def test_a_head_that_stalls_gets_408_and_the_connection_closed(server: GuaritaServer) -> None:
    with RawConnection(server) as conn:
        conn.send(b"GET /health HTTP/1.1\r\nhost: t\r\nx-slow: a")
        assert_refused(conn, 408, "header_timeout")
    assert_healthy(server)


def test_a_head_trickled_a_byte_at_a_time_gets_408(server: GuaritaServer) -> None:
    """Slowloris: every byte arrives well within any idle timeout, the head never ends."""
    data = get("/health", b"x-slow: " + b"s" * 100_000 + b"\r\n")
    with RawConnection(server) as conn:
        deadline = time.monotonic() + DEADLINE_S
        for byte in data:
            assert time.monotonic() < deadline, "the server kept reading a trickled head"
            if conn.readable(0.05):
                break
            try:
                conn.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        assert_refused(conn, 408, "header_timeout")
    assert_healthy(server)


def test_a_stalled_second_request_on_a_kept_alive_connection_gets_408(
    server: GuaritaServer,
) -> None:
    with RawConnection(server) as conn:
        conn.send(get("/health"))
        assert conn.response().status == 200
        conn.send(b"GET /health HTTP/1.1\r\nho")
        assert_refused(conn, 408, "header_timeout")


def test_a_connection_that_never_sends_is_closed_without_an_answer(
    server: GuaritaServer,
) -> None:
    with RawConnection(server) as conn:
        assert conn.closed_by_server()


# -- within the limits, nothing changes ---------------------------------------------------


def test_a_head_at_the_limit_is_served_and_the_connection_kept_alive(
    server: GuaritaServer,
) -> None:
    with RawConnection(server) as conn:
        conn.send(head_of_size(MAX_HEAD))
        first = conn.response()
        assert first.status == 200 and "connection" not in first.headers
        conn.send(head_of_size(MAX_HEAD - 1))
        assert conn.response().status == 200
        conn.send(get("/health", b"connection: close\r\n"))
        assert conn.response().status == 200
        assert conn.closed_by_server()


def test_pipelined_requests_are_answered_in_order(server: GuaritaServer) -> None:
    with RawConnection(server) as conn:
        conn.send(get("/health") + head_of_size(MAX_HEAD) + get("/nowhere") + get("/health"))
        assert [conn.response().status for _ in range(4)] == [200, 200, 404, 200]


def test_a_pipelined_head_over_the_limit_is_refused_after_the_answers_before_it(
    server: GuaritaServer,
) -> None:
    with RawConnection(server) as conn:
        conn.send(get("/health") + get("/health") + head_of_size(MAX_HEAD + 100))
        assert [conn.response().status for _ in range(2)] == [200, 200]
        assert_refused(conn, 431, "headers_too_large")


def test_a_large_body_is_still_served(client: httpx.Client) -> None:
    text = "word " * 400_000  # 2 MB: over any head limit, within max_body_bytes (4 MiB)
    response = client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": text}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: " + text


def test_streaming_still_works(client: httpx.Client) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    text = "".join(
        json.loads(event[6:])["choices"][0]["delta"].get("content") or ""
        for event in events[:-1]
        if json.loads(event[6:])["choices"]
    )
    assert text == "echo: one two three"


def test_the_server_is_healthy_after_the_refusals(
    server: GuaritaServer, client: httpx.Client
) -> None:
    assert_healthy(server)
    response = client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 200, response.text
    logs = server.logs()
    assert '"event":"request_refused"' in logs
    assert "Traceback" not in logs and "Exception in" not in logs, logs[-3000:]
