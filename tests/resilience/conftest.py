"""Shared fixtures for the resilience tests: a fake clock, and Redis with a prefix of its
own whose keys are deleted after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.helpers import REDIS_URL, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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
