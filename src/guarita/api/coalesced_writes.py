"""One write per answer where uvicorn makes two.

uvicorn's httptools protocol writes a response's head when the app sends
``http.response.start`` and its body at ``http.response.body``: two ``send(2)`` calls, each
waking the client, for every answer; under load on the benchmark machine they were a fifth
of a cache hit's CPU (``bench/README.md``, "Response cache"). :func:`coalesce_writes`
gives one request's response cycle a :class:`CoalescedWrites` as its transport: what it
writes is held until the response is complete, or until the event loop's next turn
(``call_soon``), so a head whose body comes later (a stream waiting for its model) leaves
at once all the same. The bytes on the wire are the same, in the same order: the response
is flushed before the protocol writes anything of its own or closes the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class CoalescedWrites(asyncio.Transport):
    """What a uvicorn response cycle uses of its transport (``write``, ``is_closing``,
    ``close``), with the writes of one loop turn joined."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def flush(self) -> None:
        """Write what is held (nothing, once the connection is closing)."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()


def coalesce_writes(
    cycle: Any, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
) -> None:
    """Give a new ``RequestResponseCycle`` (not started yet) joined writes, flushed when its
    response is complete, before the protocol's own completion work."""
    writes = CoalescedWrites(transport, loop)
    completed: Callable[[], None] = cycle.on_response

    def on_response() -> None:
        writes.flush()
        completed()

    cycle.transport = writes
    cycle.on_response = on_response
