"""The call pipeline: small stages, each ``async (call, next) -> Reply``, composed in order.

Every model call (``/v1/chat/completions``, ``/v1/embeddings``, ``/api/chat``, a task) goes
through the same pipeline; a capability is switched on by adding its stage, not by branches
in handlers. No handler calls a provider or a stage by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Protocol

from opentelemetry import trace

from guarita.types import Call, Reply

Next = Callable[[Call], Awaitable[Reply]]


class Stage(Protocol):
    async def __call__(self, call: Call, next: Next) -> Reply: ...


class _Traced:
    """A stage inside a span named after it (only built when tracing is on)."""

    def __init__(self, stage: Stage, tracer: trace.Tracer) -> None:
        self._stage = stage
        self._tracer = tracer
        self._name = "guarita.stage." + type(stage).__name__.lower()

    async def __call__(self, call: Call, next: Next) -> Reply:
        with self._tracer.start_as_current_span(self._name):
            return await self._stage(call, next)


def compose(stages: Sequence[Stage], terminal: Next, *, tracer: trace.Tracer | None = None) -> Next:
    """Chain ``stages`` (outermost first) in front of ``terminal``."""
    handler = terminal
    for stage in reversed(stages):
        wrapped: Stage = _Traced(stage, tracer) if tracer is not None else stage
        handler = partial(wrapped, next=handler)
    return handler


class Background:
    """The tasks that finish what calls started after their answers went out (a stream's
    settlement): held until done, and waited for at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
