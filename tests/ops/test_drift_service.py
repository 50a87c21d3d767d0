"""Drift end to end on the real local models: live answers sampled, embedded off the path
and stored; the first window becomes the baseline; the next window of an unchanged agent
raises no alarm, while one whose model was swapped (smollm2-135m -> gemma3-270m) is found,
with its metric, the urgent hook, the report over the API and the CLI."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guarita.app import create_app
from guarita.ops.drift import DriftLevel
from guarita.runtime import Runtime
from guarita.settings import load_settings
from guarita.store.drift import Evaluation
from guarita.types import Call, Caller
from tests.helpers import REDIS_URL, base_env, create_pg_database, drop_pg_database, scale_out

pytestmark = [pytest.mark.model, pytest.mark.slow]
WINDOW = 12
SUBJECTS = ["the moon", "coffee", "volcanoes", "bees", "rain", "chess", "bread", "snow",
            "music", "trees", "salt", "maps", "tea", "birds", "dogs", "the sun"]  # fmt: skip
LLAMA = {"provider": "llamacpp", "context_window": 1024}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not scale_out():
        yield {"store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"}}
        return
    name, url = create_pg_database()
    yield {"store": {"url": url}, "redis_url": REDIS_URL,
           "redis_prefix": f"guarita-test-drift-{name}:"}  # fmt: skip
    drop_pg_database(name)


async def ask(runtime: Runtime, agent: str, model: str, rng: random.Random) -> None:
    question = f"Tell me one fact about {rng.choice(SUBJECTS)}."
    body = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": question}],
            "temperature": 0.7, "max_tokens": 24, "seed": rng.randrange(2**31)}  # fmt: skip
    call = Call(request_id=f"d-{agent}", model=model, agent=agent, caller=Caller.anonymous(),
                body=body)  # fmt: skip
    await runtime.pipeline(call)
    assert call.record.confidence is not None and 0 < call.record.confidence <= 1


async def test_a_swapped_model_is_found_and_an_unchanged_agent_is_not(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        models={"smol": {**LLAMA, "options": {"packaged": "smollm2", "prompt_cache": False}},
                "gemma": {**LLAMA, "options": {"packaged": "gemma3", "prompt_cache": False}}},
        agents={"steady": {"model": "smol"}, "swapped": {"model": "smol"}},
        default_agent="steady",
        drift={"enabled": True, "sample_rate": 1.0, "window": WINDOW, "interval_s": 3600},
        auth={"enabled": False},
        **store,
    )  # fmt: skip
    runtime = Runtime(settings)
    urgent: list[tuple[str, Evaluation]] = []

    async def on_urgent(agent: str, evaluation: Evaluation) -> None:
        urgent.append((agent, evaluation))

    await runtime.start()
    try:
        assert runtime.drift is not None
        runtime.drift.evaluator.on_urgent(on_urgent)
        rng = random.Random(11)
        for _ in range(WINDOW):  # the first window after the start: the baseline
            await ask(runtime, "steady", "smol", rng)
            await ask(runtime, "swapped", "smol", rng)
        await runtime.drift.collector.flush()
        assert await runtime.drift.evaluator.evaluate_all() == []  # baselines fixed, no window
        for _ in range(WINDOW):
            await ask(runtime, "steady", "smol", rng)
            await ask(runtime, "swapped", "gemma", rng)  # the same agent, another model
        await runtime.drift.collector.flush()
        found = {(e.agent, e.kind): e for e in await runtime.drift.evaluator.evaluate_all()}
        assert set(found) == {(a, k) for a in ("steady", "swapped") for k in ("output", "input")}
        steady, swapped = found["steady", "output"], found["swapped", "output"]
        assert DriftLevel.parse(steady.level) < DriftLevel.WARNING, steady.report
        assert DriftLevel.parse(swapped.level) >= DriftLevel.WARNING, swapped.report
        assert swapped.score > steady.score
        assert DriftLevel.parse(found["swapped", "input"].level) < DriftLevel.WARNING
        assert [a for a, _ in urgent] == (["swapped"] if swapped.level == "urgent_rollback"
                                          else [])  # fmt: skip
        level = runtime.metrics.registry.get_sample_value(
            "guarita_drift_level", {"agent_name": "swapped", "kind": "output"}
        )
        assert level == int(DriftLevel.parse(swapped.level))
        # nothing new: no second evaluation of the same window
        assert await runtime.drift.evaluator.evaluate_all() == []

        app = create_app(settings, runtime=runtime)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = (await client.get("/admin/drift", params={"agent": "swapped"})).json()
            bad = await client.get("/admin/drift", params={"agent": "x" * 201})
        assert body["enabled"] is True and body["window"] == WINDOW
        rows = {r["kind"]: r for r in body["agents"]}
        assert rows["output"]["latest"]["level"] == swapped.level
        assert rows["output"]["samples"] == 2 * WINDOW
        assert rows["output"]["baseline"]["set_by"] == "auto"
        assert bad.status_code == 400 and "error" in bad.json()
    finally:
        await runtime.aclose()

    env = {**base_env(tmp_path), "GUARITA_STORE__URL": settings.store_url}
    await asyncio.to_thread(check_the_cli, env, swapped.level)


def check_the_cli(env: dict[str, str], level: str) -> None:
    """``guarita drift report`` shows what the evaluator found; ``drift baseline`` moves it."""
    cli = [sys.executable, "-m", "guarita.cli", "drift"]
    report = subprocess.run([*cli, "report", "--json"], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert report.returncode == 0, report.stderr
    levels = {(r["agent"], r["kind"]): r["latest"]["level"]
              for r in map(json.loads, report.stdout.splitlines())}  # fmt: skip
    assert levels["swapped", "output"] == level
    moved = subprocess.run([*cli, "baseline", "--agent", "swapped", "--kind", "output"],
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    report = subprocess.run([*cli, "report", "--json", "--agent", "swapped"], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    output = next(r for r in map(json.loads, report.stdout.splitlines()) if r["kind"] == "output")
    assert output["baseline"]["set_by"].startswith("cli:")
    none = subprocess.run([*cli, "baseline", "--agent", "nobody"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert none.returncode == 1 and "at least 8" in none.stderr
