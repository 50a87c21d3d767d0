"""What the HTTP provider tests share: a fake upstream process per module, and a factory
of providers pointed at it (key in the environment, every provider closed afterwards)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from guarita.providers.base import BaseProvider
from guarita.settings import ModelSettings
from tests.helpers import UPSTREAM_KEY, FakeUpstream

P = TypeVar("P", bound=BaseProvider)


@contextmanager
def running_fake(module: str, workdir: Path) -> Iterator[FakeUpstream]:
    """A fake upstream (``tests/fakes/<module>.py``) that requires ``UPSTREAM_KEY``."""
    fake = FakeUpstream(module, workdir, env={"FAKE_REQUIRE_KEY": UPSTREAM_KEY}).start()
    try:
        yield fake
    finally:
        fake.stop()


@asynccontextmanager
async def provider_factory(
    cls: type[P],
    *,
    provider: str,
    model_name: str,
    default_upstream: str,
    upstream: FakeUpstream,
    key_env: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., P]]:
    monkeypatch.setenv(key_env, UPSTREAM_KEY)
    made: list[P] = []

    def make(upstream_model: str = default_upstream, **overrides: Any) -> P:
        fields: dict[str, Any] = {
            "provider": provider,
            "upstream": upstream_model,
            "base_url": upstream.base_url + "/v1",
            "api_key_env": key_env,
            **overrides,
        }
        instance = cls(model_name, ModelSettings(**fields))  # type: ignore[call-arg]
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in made:
            await instance.aclose()
