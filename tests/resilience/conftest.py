"""Shared fixtures for the resilience tests: a fake clock, and Redis with a prefix of its
own whose keys are deleted after each test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.helpers import REDIS_URL


class FakeClock:
    """A clock the test moves by hand; what breakers read instead of ``time.time``."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own in the test Redis; its keys are removed afterwards."""
    import redis.asyncio as redis

    prefix = f"guarita-test-resilience-{secrets.token_hex(4)}:"
    yield prefix
    client = redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=prefix + "*"):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_clients() -> AsyncIterator[Callable[[], Any]]:
    """A factory of Redis clients (one per simulated process), all closed afterwards."""
    import redis.asyncio as redis

    clients: list[Any] = []

    def make() -> Any:
        client = redis.from_url(REDIS_URL)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
