"""One write per answer: what a response cycle writes in one loop turn leaves together,
in order, and nothing is written after the connection began to close."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from guarita.api.coalesced_writes import CoalescedWrites, coalesce_writes


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        assert not self.closing, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


async def test_a_head_and_its_body_leave_in_one_write() -> None:
    transport = Transport()
    writes = CoalescedWrites(transport, asyncio.get_running_loop())
    writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writes.write(b"body")
    assert transport.writes == []
    writes.flush()
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


async def test_a_head_whose_body_comes_later_leaves_on_the_next_loop_turn() -> None:
    transport = Transport()
    writes = CoalescedWrites(transport, asyncio.get_running_loop())
    writes.write(b"head")
    await asyncio.sleep(0)
    assert transport.writes == [b"head"]
    writes.write(b"chunk 1")
    writes.write(b"chunk 2")
    await asyncio.sleep(0)
    assert transport.writes == [b"head", b"chunk 1chunk 2"]


async def test_close_writes_what_is_held_first_and_a_closing_connection_gets_nothing() -> None:
    transport = Transport()
    writes = CoalescedWrites(transport, asyncio.get_running_loop())
    writes.write(b"last")
    writes.close()
    assert transport.writes == [b"last"] and transport.closing
    lost = Transport()
    late = CoalescedWrites(lost, asyncio.get_running_loop())
    late.write(b"too late")
    lost.closing = True
    await asyncio.sleep(0)
    assert lost.writes == []


async def test_the_response_is_written_before_the_protocol_hears_it_is_complete() -> None:
    transport = Transport()
    seen: list[list[bytes]] = []
    cycle = SimpleNamespace(
        transport=transport, on_response=lambda: seen.append(list(transport.writes))
    )
    coalesce_writes(cycle, transport, asyncio.get_running_loop())
    cycle.transport.write(b"head")
    cycle.transport.write(b"body")
    cycle.on_response()
    assert seen == [[b"headbody"]]
