"""What a canary adds to each request's CPU, in process: the arm's assignment (the rollout
from the in-process cache, a hash against the stage's percent) and the sample's hand-over
(``put_nowait``) on the live path; then, off it, the sample's row and its relevance score
(WordLlama: two texts embedded and a cosine).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/rollout_stage.py [--calls 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from guarita.ops.rollout_samples import Observation, SampleRecorder
from guarita.ops.rollouts import ActiveRollouts, assign
from guarita.ops.scorers import RelevanceScorer, ScoreInput, Similarity
from guarita.settings_quality import RELEVANCE_FULL_AT
from guarita.store.rollouts import Rollout

NOW = datetime.now(UTC)
ROLLOUT = Rollout(
    id="ro_0123456789abcdef", agent="support", change_type="prompt_update", strategy="canary",
    candidate_prompt="support@2", candidate_model=None, stable_prompt="support@1",
    stable_model="m", plan={"stages": [5, 25, 50, 100]}, stage=1, state="canary",
    stage_started_at=NOW, version=3, created_by="ana", created_at=NOW, updated_at=NOW,
    last_decision=None, in_effect=True,
)  # fmt: skip
MESSAGES = ({"role": "system", "content": "You help."},
            {"role": "user", "content": "How do I reset my password?"})  # fmt: skip
ANSWER = "Open Settings, choose Account and click 'Reset password'; we email you a link."


class _Store:
    async def in_effect(self) -> list[Rollout]:
        return [ROLLOUT]


class _Writer:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def per_call_us(started: float, calls: int) -> float:
    return (time.process_time() - started) / calls * 1e6


async def main(calls: int) -> None:
    active = ActiveRollouts(_Store(), None, ttl_s=1.0)  # type: ignore[arg-type]
    await active.get("support")
    started = time.process_time()
    for i in range(calls):
        rollout = await active.get("support")
        assert rollout is not None
        assign(rollout, None, None, f"request-{i}")
    routed = per_call_us(started, calls)

    writer: Any = _Writer()
    recorder = SampleRecorder(writer, relevance=None, queue_size=calls + 1)
    observation = Observation(
        rollout_id=ROLLOUT.id, agent="support", stage=1, variant="canary", request_id="r",
        ok=True, latency_ms=412.0, quality=1.0, input_tokens=30, output_tokens=20,
        cost_usd=0.0002, messages=MESSAGES, answer=ANSWER,
    )  # fmt: skip
    started = time.process_time()
    for i in range(calls):  # built as the agent service builds it, then handed over
        recorder.observe(Observation(
            rollout_id=ROLLOUT.id, agent="support", stage=1, variant="canary",
            request_id=f"r{i}", ok=True, latency_ms=412.0, quality=1.0, input_tokens=30,
            output_tokens=20, cost_usd=0.0002, messages=tuple(MESSAGES), answer=ANSWER,
        ))  # fmt: skip
    handed = per_call_us(started, calls)

    started = time.process_time()
    for _ in range(calls):
        await recorder._row(observation)  # the worker's row, relevance off
    row = per_call_us(started, calls)

    similarity = Similarity()
    scorer = RelevanceScorer("relevance", similarity, full_at=RELEVANCE_FULL_AT)
    item = ScoreInput(list(MESSAGES), ANSWER)
    await scorer.score(item)  # loads WordLlama
    n = max(200, calls // 100)
    started = time.process_time()
    for i in range(n):
        await scorer.score(ScoreInput(list(MESSAGES), f"{ANSWER} ({i})"))
    relevance = per_call_us(started, n)
    await similarity.aclose()
    print(
        f"live path, per request: assignment (cached rollout + hash) {routed:.2f} µs, "
        f"sample hand-over {handed:.2f} µs"
    )
    print(
        f"off the live path, per sample: row {row:.2f} µs, relevance (WordLlama) "
        f"{relevance / 1000:.3f} ms ({n} distinct answers)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().calls))
