"""The drift evaluation's turn across real OS processes on one Redis: of several API
processes asking at once, exactly one evaluates each period, so a window is tested (and its
level change announced) once.

The children are this module run as a script (``python -m tests.ops.test_drift_turns
PREFIX NOW``): each asks for the turn of the period ``NOW`` falls in and prints the answer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, cast

import pytest

from guarita.ops.drift_service import DriftEvaluator
from guarita.settings_drift import DriftSettings
from guarita.state.memory import MemorySharedState
from guarita.state.redis import RedisSharedState
from tests.helpers import REDIS_URL, ROOT

PROCESSES = 4


def evaluator(turns: Any, interval_s: float = 60.0) -> DriftEvaluator:
    """An evaluator that only takes turns (no store is read)."""
    settings = DriftSettings(enabled=True, interval_s=interval_s)
    return DriftEvaluator(cast(Any, None), settings, [], turns=turns, publish=lambda t, d: None,
                          audit=lambda *a, **k: None)  # fmt: skip


async def ask(prefix: str, now: float) -> bool:
    async with RedisSharedState.from_url(REDIS_URL, prefix=prefix, max_connections=2) as state:
        return await evaluator(state).take_turn(now)


async def children_ask(prefix: str, now: float) -> list[str]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.ops.test_drift_turns",
            prefix,
            repr(now),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    answers = []
    async with asyncio.timeout(60):
        for proc in procs:
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            answers.append(out.decode().strip())
    return answers


@pytest.mark.slow
async def test_of_four_processes_exactly_one_evaluates_each_period(redis_prefix: str) -> None:
    now = time.time()
    first = await children_ask(redis_prefix, now)
    assert sorted(first) == ["False"] * (PROCESSES - 1) + ["True"], first
    again = await children_ask(redis_prefix, now + 1)  # the same 60 s period (most likely)
    if int((now + 1) // 60) == int(now // 60):
        assert again == ["False"] * PROCESSES, again
    following = await children_ask(redis_prefix, now + 60)  # the next period
    assert sorted(following) == ["False"] * (PROCESSES - 1) + ["True"], following


async def test_in_one_process_the_turn_is_taken_once_per_period() -> None:
    state = MemorySharedState()
    evaluators = [evaluator(state, interval_s=10.0) for _ in range(3)]
    got = await asyncio.gather(*(e.take_turn(1000.0) for e in evaluators))
    assert sorted(got) == [False, False, True]
    assert not await evaluators[0].take_turn(1009.9)
    assert await evaluators[1].take_turn(1010.0)


if __name__ == "__main__":
    print(asyncio.run(ask(sys.argv[1], float(sys.argv[2]))))
