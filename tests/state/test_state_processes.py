"""The shared state across real OS processes on one Redis: several processes admit exactly
a limit's capacity between them, and a process killed with reservations open leaks nothing.

The children are this module run as a script (``python -m tests.state.test_state_processes
burst|hold PREFIX COUNT``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as redis

from guarita.state import Limit
from guarita.state.redis import RedisSharedState
from tests.helpers import REDIS_URL, ROOT

pytestmark = pytest.mark.slow

PER_MINUTE = Limit("{procs}:rpm", 60, "minute")
IN_FLIGHT_CAPACITY = 5
IN_FLIGHT = Limit("{procs}:inflight", IN_FLIGHT_CAPACITY, "concurrent")
HOLD_TTL_S = 1.0


class Child:
    """One child process; it prints ``ready`` (or ``held``) once it is set up."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, mode: str, prefix: str, count: int) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.state.test_state_processes",
            mode,
            prefix,
            str(count),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, within: float = 30.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            raw = await self.proc.stdout.readline()
        if not raw:
            assert self.proc.stderr is not None
            raise AssertionError(f"child ended: {(await self.proc.stderr.read()).decode()}")
        return raw.decode().strip()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def seconds_left_in_minute(client: Any) -> float:
    seconds, micros = await client.time()
    return 60 - (int(seconds) % 60 + int(micros) / 1e6)


async def test_four_processes_admit_exactly_the_limit(redis_prefix: str) -> None:
    """4 processes x 250 concurrent reservations on a 60-per-minute counter: 60 admitted."""
    children = await asyncio.gather(*(Child.start("burst", redis_prefix, 250) for _ in range(4)))
    client = redis.from_url(REDIS_URL)
    try:
        assert [await child.line() for child in children] == ["ready"] * 4
        if (left := await seconds_left_in_minute(client)) < 3:
            await asyncio.sleep(left + 0.1)  # one burst, one window (Redis's minute)
        for child in children:
            child.go()
        results = [json.loads(await child.line()) for child in children]
        windows: Counter[float] = Counter()
        for result in results:
            windows.update(result["admitted"])
        assert sum(len(r["admitted"]) for r in results) == 60, windows
        assert sum(len(r["refused"]) for r in results) == 940
        assert len(windows) == 1
        state = RedisSharedState(client, prefix=redis_prefix)
        (counter,) = await state.usage([PER_MINUTE])
        assert counter.held == 60 and counter.remaining == 0
    finally:
        for child in children:
            await child.stop()
        await client.aclose()


async def test_a_killed_process_releases_its_holds_by_itself(redis_prefix: str) -> None:
    """A process SIGKILLed with 5 reservations open: after their TTL they hold nothing."""
    child = await Child.start("hold", redis_prefix, IN_FLIGHT_CAPACITY)
    client = redis.from_url(REDIS_URL)
    state = RedisSharedState(client, prefix=redis_prefix)
    try:
        assert await child.line() == "held"
        held_at = time.monotonic()
        child.proc.send_signal(signal.SIGKILL)
        await child.proc.wait()
        refused = not (await state.reserve("parent-0", [IN_FLIGHT], ttl_s=30)).allowed
        assert refused or time.monotonic() - held_at >= HOLD_TTL_S  # (unless this machine stalled)
        deadline = held_at + HOLD_TTL_S + 5
        while (await state.usage([IN_FLIGHT]))[0].held != 0:
            assert time.monotonic() < deadline, "the killed process's holds did not expire"
            await asyncio.sleep(0.05)
        for i in range(IN_FLIGHT_CAPACITY):
            assert (await state.reserve(f"parent-{i}", [IN_FLIGHT], ttl_s=30)).allowed
    finally:
        await child.stop()
        await client.aclose()


# -- the children ------------------------------------------------------------------------


async def burst(prefix: str, count: int) -> None:
    """Reserve ``count`` times at once on the per-minute counter, when told to go."""
    async with RedisSharedState.from_url(REDIS_URL, prefix=prefix, max_connections=32) as state:
        warm = Limit("{procs}:warm", None, "concurrent")  # connections open, scripts loaded
        await asyncio.gather(
            *(state.reserve(f"warm-{os.getpid()}-{i}", [warm], 5) for i in range(32))
        )
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        admissions = await asyncio.gather(
            *(state.reserve(f"{os.getpid()}-{i}", [PER_MINUTE], ttl_s=30) for i in range(count))
        )
    print(
        json.dumps(
            {
                "admitted": [a.counters[0].reset_at for a in admissions if a.allowed],
                "refused": [a.counters[0].reset_at for a in admissions if not a.allowed],
            }
        ),
        flush=True,
    )


async def hold(prefix: str, count: int) -> None:
    """Hold ``count`` in-flight reservations and wait to be killed."""
    async with RedisSharedState.from_url(REDIS_URL, prefix=prefix) as state:
        for i in range(count):
            admission = await state.reserve(f"child-{i}", [IN_FLIGHT], ttl_s=HOLD_TTL_S)
            assert admission.allowed
        print("held", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    mode, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run((burst if mode == "burst" else hold)(prefix, count))
