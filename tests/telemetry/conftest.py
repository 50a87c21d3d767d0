"""Fixtures for the event and tracing tests: streams of their own on the real Redis and
NATS services, deleted afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.telemetry.support import NATS_URL, REDIS_URL, make_validator, unique


@pytest.fixture(scope="session")
def event_validator() -> Draft202012Validator:
    return make_validator()


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    import redis.asyncio as redis

    client = redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_stream(redis_client: Any) -> AsyncIterator[str]:
    """A stream key of the test's own, deleted afterwards."""
    name = unique()
    yield name
    await redis_client.delete(name)


@pytest.fixture
async def nats_stream() -> AsyncIterator[str]:
    """A JetStream stream name of the test's own; the stream is deleted afterwards."""
    import nats
    from nats.js.errors import NotFoundError

    name = unique()
    yield name
    conn = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        with contextlib.suppress(NotFoundError):
            await conn.jetstream().delete_stream(name)
    finally:
        await conn.close()
