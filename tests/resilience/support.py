"""Helpers for the resilience tests: settings for an in-process runtime, model groups
built the way the runtime builds them, calls, metric readings, fake upstream control."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from guarita.app import create_app
from guarita.providers.base import ProviderRegistry
from guarita.resilience.breaker import BreakerStore, SharedBreakerStore
from guarita.resilience.build import build_groups
from guarita.resilience.group import ModelGroup
from guarita.resilience.quality import Scorer
from guarita.runtime import Runtime
from guarita.settings import Settings
from guarita.state.memory import MemorySharedState
from guarita.telemetry.metrics import Metrics
from guarita.types import Call, Caller
from tests.helpers import REDIS_URL, FakeUpstream, Leftovers, scale_out

FAST_RETRY = {"base_delay_s": 0.001, "max_delay_s": 5.0}


def settings(
    tmp_path: Path, models: dict[str, Any], *, shared: bool = True, **overrides: Any
) -> Settings:
    """``models`` behind agent ``a`` (on the first model), SQLite in ``tmp_path``, auth off.

    In scale-out mode (and unless ``shared`` is false) the runtime keeps its shared state,
    circuit breakers included, in Redis under a prefix of its own."""
    values: dict[str, Any] = {
        "models": models,
        "agents": {"a": {"model": next(iter(models))}},
        "default_agent": "a",
        "data_dir": tmp_path,
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"},
        "auth": {"enabled": False},
        "server": {"log_level": "warning"},
    }
    if shared and scale_out():
        prefix = f"guarita-test-resilience-{secrets.token_hex(4)}:"
        Leftovers.redis_prefixes.append(prefix)
        values.update(redis_url=REDIS_URL, redis_prefix=prefix)
    values.update(overrides)
    return Settings(**values)


def call(model: str = "m", text: str = "hello", *, stream: bool = False, **body: Any) -> Call:
    return Call(
        request_id="test",
        model=model,
        body={"messages": [{"role": "user", "content": text}], **body},
        caller=Caller.anonymous(),
        stream=stream,
    )


@contextlib.asynccontextmanager
async def groups(
    config: Settings, breakers: BreakerStore | None = None, *, scorer: Scorer | None = None
) -> AsyncIterator[tuple[dict[str, ModelGroup], Metrics]]:
    """The model groups of ``config``, built as the runtime builds them; providers closed
    at the end."""
    metrics = Metrics()
    store = breakers or SharedBreakerStore(MemorySharedState())
    built = build_groups(config, ProviderRegistry(), store, metrics, scorer=scorer)
    try:
        for group in built.values():
            for deployment in group.deployments:
                await deployment.provider.start()
        yield built, metrics
    finally:
        for group in built.values():
            for deployment in group.deployments:
                await deployment.provider.aclose()


@contextlib.asynccontextmanager
async def serve(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the app around ``runtime`` (started here, closed at the end)."""
    app = create_app(runtime.settings, runtime=runtime)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://guarita.test", timeout=60
        ) as client:
            yield client
    finally:
        await runtime.aclose()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


async def control(upstream: FakeUpstream, **settings: Any) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(upstream.base_url + "/_control", json=settings)
        response.raise_for_status()


async def upstream_calls(upstream: FakeUpstream) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(upstream.base_url + "/_stats")
        response.raise_for_status()
        return int(response.json()["calls"])


def openai_model(upstream: FakeUpstream, name: str, **extra: Any) -> dict[str, Any]:
    """A model served by the fake OpenAI upstream, which behaves as ``name`` says."""
    return {"provider": "openai", "upstream": name, "base_url": upstream.base_url + "/v1", **extra}
