"""Support for the event and tracing tests: the real Redis and NATS services, an in-process
app over ``httpx.ASGITransport``, polling with deadlines, the event schema."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from jsonschema import Draft202012Validator, FormatChecker

from guarita.app import create_app
from guarita.runtime import Runtime
from guarita.settings import Settings
from tests.helpers import ROOT

REDIS_URL = os.environ.get("GUARITA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("GUARITA_TEST_NATS_URL", "nats://127.0.0.1:4222")
SCHEMA_PATH = ROOT / "docs" / "events.schema.json"
EVENTS_DOC = ROOT / "docs" / "events.md"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "tell me about telemetry"}]}

T = TypeVar("T")


def unique(prefix: str = "guarita-telemetry-test") -> str:
    """A name no other test (or run) uses: streams, queues."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def poll(
    probe: Callable[[], Awaitable[T]], *, what: str, within: float = 30.0, interval: float = 0.05
) -> T:
    """Await ``probe`` until it returns something truthy, or fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)


# -- The event schema -------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


def make_validator() -> Draft202012Validator:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def assert_valid_event(validator: Draft202012Validator, event: dict[str, Any]) -> None:
    errors = sorted(validator.iter_errors(event), key=lambda e: list(e.absolute_path))
    assert not errors, f"event does not match {SCHEMA_PATH.name}: {event}\n" + "\n".join(
        f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


# -- Redis ------------------------------------------------------------------------------


async def read_stream(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every event in a Redis stream, oldest first; checks each entry's ``type`` field."""
    events = []
    for _entry_id, fields in await client.xrange(stream):
        event: dict[str, Any] = orjson.loads(fields[b"event"])
        assert fields[b"type"].decode() == event["type"]
        events.append(event)
    return events


# -- An in-process app ------------------------------------------------------------------


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """A scripted model ``m`` behind agent ``a``, SQLite in ``tmp_path``, auth off."""
    values: dict[str, Any] = {
        "models": {"m": {"provider": "scripted"}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        "data_dir": tmp_path,
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"},
        "auth": {"enabled": False},
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def serve(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the app around ``runtime``, which is started here (ASGITransport runs
    no lifespan) and closed at the end."""
    app = create_app(runtime.settings, runtime=runtime)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://guarita.test") as client:
            yield client
    finally:
        await runtime.aclose()
