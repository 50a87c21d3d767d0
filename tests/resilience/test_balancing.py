"""Load balancing over a model's deployments: least outstanding requests spreads concurrent
calls, weighted random follows the weights, and a deployment whose breaker is open is
skipped (scripted deployments, which count the calls they get)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from guarita.errors import CircuitOpen
from guarita.resilience.group import ModelGroup
from guarita.runtime import Runtime
from tests.resilience.support import call, groups, serve, settings


def deployment(name: str, weight: float = 1.0, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "scripted",
        "weight": weight,
        "options": {"reply": f"from {name}", **options},
    }


def model(*deployments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"provider": "scripted", "deployments": list(deployments), **extra}


def calls_per_deployment(group: ModelGroup) -> dict[str, int]:
    return {d.name: d.provider.calls for d in group.deployments}  # type: ignore[attr-defined]


async def test_least_outstanding_spreads_concurrent_calls(tmp_path: Path) -> None:
    config = settings(
        tmp_path, {"m": model(deployment("a", delay_s=0.2), deployment("b", delay_s=0.2))}
    )
    async with groups(config) as (built, _):
        group = built["m"]
        replies = await asyncio.gather(*(group(call()) for _ in range(10)))
        assert calls_per_deployment(group) == {"a": 5, "b": 5}
        assert Counter(r.deployment for r in replies) == {"a": 5, "b": 5}
        assert [d.outstanding for d in group.deployments] == [0, 0]


async def test_least_outstanding_favours_the_idle_deployment(tmp_path: Path) -> None:
    config = settings(
        tmp_path, {"m": model(deployment("busy", delay_s=0.3), deployment("idle", delay_s=0.3))}
    )
    async with groups(config) as (built, _):
        group = built["m"]
        busy = group.deployments[0]
        busy.outstanding += 3  # three calls of another request are in flight there
        try:
            replies = await asyncio.gather(*(group(call()) for _ in range(5)))
        finally:
            busy.outstanding -= 3
        # idle takes calls until it has as many in flight as busy (3), then they alternate
        assert calls_per_deployment(group) == {"busy": 1, "idle": 4}
        assert Counter(r.deployment for r in replies) == {"busy": 1, "idle": 4}


async def test_weighted_follows_the_weights(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        {
            "m": model(
                deployment("heavy", weight=3), deployment("light", weight=1), balancing="weighted"
            )
        },
    )
    async with groups(config) as (built, _):
        group = built["m"]
        for _ in range(400):
            await group(call())
        counts = calls_per_deployment(group)
    assert counts["heavy"] + counts["light"] == 400
    assert 240 <= counts["heavy"] <= 360  # expected 300; the bounds are 7 standard deviations


@pytest.mark.parametrize("balancing", ["least_outstanding", "weighted"])
async def test_an_open_breaker_is_skipped(tmp_path: Path, balancing: str) -> None:
    config = settings(
        tmp_path,
        {
            "m": model(
                deployment("bad", fail_every=1),
                deployment("good"),
                balancing=balancing,
                retry={"max_attempts": 1},
                breaker={"failure_threshold": 3},
            )
        },
    )
    runtime = Runtime(config)  # breakers in Redis in scale-out mode
    levels: Counter[str] = Counter()
    async with serve(runtime) as client:
        for _ in range(40):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"] == "from good"
            levels[response.headers["x-guarita-fallback-level"]] += 1
        group = runtime.models["m"]
        assert calls_per_deployment(group) == {"bad": 3, "good": 40}
        bad = group.deployments[0].breaker
        assert bad is not None and await bad.state() == "open"
    # "deployment" when bad was tried first and failed; "primary" when good came first
    assert levels == {"deployment": 3, "primary": 37}


async def test_all_breakers_open_is_a_503_circuit_open(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        {
            "m": model(
                deployment("x", fail_every=1),
                deployment("y", fail_every=1),
                retry={"max_attempts": 1},
                breaker={"failure_threshold": 1},
            )
        },
    )
    async with groups(config) as (built, _):
        group = built["m"]
        for _ in range(2):  # whichever comes first fails and opens; then the other
            with pytest.raises(Exception, match=r"scripted failure|circuit open"):
                await group(call())
        with pytest.raises(CircuitOpen) as raised:
            await group(call())
        assert calls_per_deployment(group) == {"x": 1, "y": 1}
    assert raised.value.status_code == 503 and raised.value.code == "circuit_open"


async def test_concurrent_calls_spread_with_shared_breakers(tmp_path: Path) -> None:
    """Through the runtime (Redis breakers in scale-out mode, where reading the breaker is
    I/O): concurrent calls still reach both deployments."""
    config = settings(
        tmp_path, {"m": model(deployment("a", delay_s=0.2), deployment("b", delay_s=0.2))}
    )
    runtime = Runtime(config)
    async with serve(runtime) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(20))
        )
        assert all(r.status_code == 200 for r in responses)
        counts = calls_per_deployment(runtime.models["m"])
    assert counts["a"] + counts["b"] == 20 and min(counts.values()) >= 1
