"""Fault injection around any provider, for drills and tests: errors, added latency,
timeouts, truncated streams and garbage answers, at configured rates.

Configured per model or deployment (``chaos:`` in settings), never by code changes, so a
drill runs the same code paths as production.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from guarita.errors import UpstreamError, UpstreamTimeout, UpstreamTruncated
from guarita.providers.base import Provider
from guarita.providers.common import completion_body
from guarita.settings import ChaosSettings
from guarita.types import Call, Chunk, Completion, Embeddings, Usage


class ChaosProvider:
    def __init__(
        self, inner: Provider, settings: ChaosSettings, *, timeout_s: float = 30.0
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._chaos = settings
        self._random = random.Random(settings.seed)
        self._timeout_s = timeout_s
        self.injected: dict[str, int] = {"error": 0, "timeout": 0, "truncate": 0, "garbage": 0}

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate

    async def _before(self) -> None:
        low, high = self._chaos.latency_ms
        if high > 0:
            await asyncio.sleep(self._random.uniform(low, high) / 1000)
        if self._roll(self._chaos.error_rate):
            self.injected["error"] += 1
            raise UpstreamError("chaos: injected upstream failure")
        if self._roll(self._chaos.timeout_rate):
            self.injected["timeout"] += 1
            await asyncio.sleep(self._timeout_s)
            raise UpstreamTimeout("chaos: injected timeout")

    async def start(self) -> None:
        await self.inner.start()

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def complete(self, call: Call) -> Completion:
        await self._before()
        if self._roll(self._chaos.garbage_rate):
            self.injected["garbage"] += 1
            body = completion_body(
                cid="chaos", model="chaos", text="", finish_reason="stop", usage=Usage()
            )
            return Completion(body=body, usage=Usage(), model="chaos")
        return await self.inner.complete(call)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        await self._before()
        truncate = self._roll(self._chaos.truncate_rate)
        count = 0
        async for item in self.inner.stream(call):
            if truncate and count >= 2:
                self.injected["truncate"] += 1
                raise UpstreamTruncated("chaos: stream cut off")
            count += 1
            yield item

    async def embed(self, inputs: list[str]) -> Embeddings:
        await self._before()
        return await self.inner.embed(inputs)

    async def aclose(self) -> None:
        await self.inner.aclose()
