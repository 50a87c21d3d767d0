"""The call pipeline: small stages, each ``async (call, next) -> Reply``, composed in order.

Every model call (``/v1/chat/completions``, ``/api/chat``, a task) goes through the same
pipeline; a capability is switched on by adding its stage, not by branches in handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from guarita.types import Call, Reply

Next = Callable[[Call], Awaitable[Reply]]


class Stage(Protocol):
    async def __call__(self, call: Call, next: Next) -> Reply: ...


def compose(stages: Sequence[Stage], terminal: Next) -> Next:
    """Chain ``stages`` (outermost first) in front of ``terminal``."""
    handler = terminal
    for stage in reversed(stages):
        handler = partial(stage, next=handler)
    return handler
