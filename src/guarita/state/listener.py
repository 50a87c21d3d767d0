"""One background subscriber per channel: what every consumer of invalidation-by-publish
(breakers, the key cache, economy mode) would otherwise write again.

A :class:`Listener` subscribes to its channel, hands each message to ``on_message`` and,
whenever it (re)subscribes, calls ``on_subscribed``: what was published while it was away
is lost (delivery is at most once), so a consumer drops what it cached then. A failing
subscription is retried every ``retry_s``; the consumer's TTL or poll bounds staleness
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from guarita.aio import cancel_and_wait
from guarita.state import Broadcast

log = structlog.get_logger("guarita.state")

SUBSCRIBE_WAIT_S = 5.0
"""How long :meth:`Listener.start` waits for the subscription before going on without it."""


class Listener:
    def __init__(
        self,
        broadcast: Broadcast,
        channel: str,
        on_message: Callable[[bytes], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        retry_s: float = 1.0,
    ) -> None:
        self._broadcast = broadcast
        self.channel = channel
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe in the background; returns once subscribed, or after
        :data:`SUBSCRIBE_WAIT_S` (it keeps trying)."""
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready), name=f"listener-{self.channel}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=SUBSCRIBE_WAIT_S)

    async def _run(self, ready: asyncio.Event) -> None:
        while True:
            try:
                async with self._broadcast.subscribe(self.channel) as messages:
                    if self._on_subscribed is not None:
                        self._on_subscribed()
                    ready.set()
                    async for message in messages:
                        try:
                            self._on_message(message)
                        except Exception:
                            log.exception("listener_message_failed", channel=self.channel)
                return  # the state was closed
            except Exception as exc:  # noqa: BLE001 - keep listening
                ready.set()
                log.warning("listener_failed", channel=self.channel, error_type=type(exc).__name__)
                await asyncio.sleep(self._retry_s)

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
