"""Shared fixtures. Any test that tries to reach a non-loopback address fails."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    REDIS_URL,
    clean_leftovers,
    create_pg_database,
    drop_pg_database,
    scale_out,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mode",
        choices=["embedded", "scaleout"],
        default=None,
        help="embedded (SQLite, in-process state and tasks) or scaleout (PostgreSQL, Redis, "
        "Celery over RabbitMQ); default: $GUARITA_TEST_MODE or embedded",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--mode")
    if mode:
        os.environ["GUARITA_TEST_MODE"] = mode


def pytest_report_header(config: pytest.Config) -> str:
    return f"guarita test mode: {os.environ.get('GUARITA_TEST_MODE', 'embedded')}"


@pytest.fixture(autouse=True, scope="session")
def _scale_out_cleanup() -> Iterator[None]:
    yield
    clean_leftovers()  # scale-out servers, and the scale-out tests of any mode


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise AssertionError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise AssertionError(f"test tried to reach the network: {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_internet() -> Iterator[None]:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own for the session, dropped at the end."""
    name, url = create_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test against the embedded SQLite store and against PostgreSQL
    (a database of its own, dropped after the test)."""
    if request.param == "sqlite":
        if scale_out():
            pytest.skip("scale-out mode runs on PostgreSQL")
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    name, url = create_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own in the test Redis; its keys are removed afterwards."""
    import redis.asyncio as redis

    prefix = f"guarita-test-{secrets.token_hex(4)}:"
    yield prefix
    client = redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=prefix + "*"):
            await client.delete(key)
    finally:
        await client.aclose()
