"""Retries: full-jitter backoff, which errors are worth another try, the retry budget, and
a model group retrying real calls (the scripted provider, and the fake OpenAI upstream over
HTTP, which counts the calls it receives)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guarita.errors import (
    CircuitOpen,
    InvalidRequest,
    QualityRejected,
    ServiceUnavailable,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from guarita.resilience.retry import RetryBudget, RetryPolicy, backoff_delay, is_retryable
from guarita.runtime import Runtime
from tests.helpers import FakeUpstream, wait_until
from tests.resilience.support import (
    FAST_RETRY,
    call,
    control,
    groups,
    openai_model,
    sample,
    serve,
    settings,
    upstream_calls,
)

# -- Backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8])
def test_full_jitter_stays_within_the_exponential_ceiling(attempt: int) -> None:
    policy = RetryPolicy(base_delay_s=0.2, max_delay_s=5.0)
    ceiling = min(5.0, 0.2 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, policy) for _ in range(2000)]
    assert all(0 <= d <= ceiling for d in delays)
    # full jitter: spread over the whole range, not bunched at the ceiling
    assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9
    assert ceiling * 0.4 < sum(delays) / len(delays) < ceiling * 0.6


def test_the_ceiling_doubles_per_attempt_up_to_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0)
    highest = [max(backoff_delay(n, policy) for _ in range(2000)) for n in (1, 2, 3, 4, 6)]
    assert highest[0] <= 0.1 < highest[1] <= 0.2 < highest[2] <= 0.4 < highest[3] <= 0.8
    assert 0.8 < highest[4] <= 1.0


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay_s=0.2, max_delay_s=5.0)
    error = UpstreamRateLimited("slow down", retry_after=2.0)
    delays = [backoff_delay(1, policy, error) for _ in range(500)]
    assert all(d == 2.0 for d in delays)  # the jitter (at most 0.2 s) never exceeds it
    delays = [backoff_delay(6, policy, error) for _ in range(2000)]  # ceiling 5 s
    assert all(2.0 <= d <= 5.0 for d in delays) and max(delays) > 4.5


# -- What is worth retrying -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (UpstreamError("502"), True),
        (UpstreamUnavailable("connection refused"), True),
        (UpstreamTimeout("read timeout"), True),
        (UpstreamRateLimited("429", retry_after=1), True),
        (ServiceUnavailable("503"), True),
        (UpstreamAuthFailed("401 from upstream"), False),
        (InvalidRequest("400 from upstream"), False),
        (InvalidRequest("maximum context length", code="context_length_exceeded"), False),
        (ValueError("a bug of ours"), False),
    ],
)
def test_is_retryable(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable


# -- The budget -------------------------------------------------------------------------


def test_budget_under_a_burst_allows_at_most_a_fifth_extra() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.2, budget_min_retries=3))
    spent = 0
    for _ in range(100):  # 100 failing calls, each wanting two retries
        budget.record_call()
        spent += budget.try_spend() + budget.try_spend()
    assert spent == 20
    assert budget.refused == 200 - 20
    assert not budget.try_spend()


def test_budget_has_a_floor_for_quiet_upstreams() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.2, budget_min_retries=3))
    budget.record_call()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


def test_budget_window_slides() -> None:
    budget = RetryBudget(RetryPolicy(budget_min_retries=1, budget_window_s=0.2))
    budget.record_call()
    assert budget.try_spend() and not budget.try_spend()
    spent_at = time.monotonic()
    wait_until(budget.try_spend, timeout=10, interval=0.02, what="the window to slide")
    assert time.monotonic() - spent_at >= 0.2  # not before the old retry left the window


# -- A model group retrying -------------------------------------------------------------


async def test_group_retries_scripted_failures_then_answers(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        {
            "m": {
                "provider": "scripted",
                "options": {"fail_first": 2, "reply": "finally"},
                "retry": {"max_attempts": 3},
            }
        },
    )
    async with groups(config) as (built, metrics):
        reply = await built["m"](call())
        assert reply.text == "finally" and reply.fallback_level == "primary"
        assert built["m"].primary.provider.calls == 3  # type: ignore[attr-defined]
        assert sample(metrics, "guarita_retries_total", deployment="m") == 2


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = FakeUpstream("openai_upstream", tmp_path_factory.mktemp("retry-upstream")).start()
    yield fake
    fake.stop()


@pytest.fixture
async def fresh(upstream: FakeUpstream) -> FakeUpstream:
    await control(upstream, reset=True, fail_rate=0, down=False, delay_ms=0)
    return upstream


async def test_group_retries_5xx_up_to_max_attempts(fresh: FakeUpstream, tmp_path: Path) -> None:
    model = openai_model(fresh, "fail-500", retry={**FAST_RETRY, "max_attempts": 4})
    async with groups(settings(tmp_path, {"m": model})) as (built, metrics):
        with pytest.raises(UpstreamError):
            await built["m"](call())
    assert await upstream_calls(fresh) == 4
    assert sample(metrics, "guarita_retries_total", deployment="m") == 3


@pytest.mark.parametrize("max_attempts", [2, 3])
async def test_the_last_attempt_spends_no_retry(
    fresh: FakeUpstream, tmp_path: Path, max_attempts: int
) -> None:
    """Only retries that happen are counted and taken from the budget: a last attempt that
    fails has nothing left to spend one on."""
    retry = {**FAST_RETRY, "max_attempts": max_attempts, "budget_min_retries": 2}
    model = openai_model(fresh, "fail-500", retry=retry, breaker={"enabled": False})
    async with groups(settings(tmp_path, {"m": model})) as (built, metrics):
        with pytest.raises(UpstreamError):
            await built["m"](call())
        assert sample(metrics, "guarita_retries_total", deployment="m") == max_attempts - 1
        assert sample(metrics, "guarita_retry_budget_exhausted_total", deployment="m") == 0
        assert await upstream_calls(fresh) == max_attempts


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [("fail-400", InvalidRequest), ("fail-401", UpstreamAuthFailed)],
)
async def test_group_never_retries_what_the_request_or_our_key_caused(
    fresh: FakeUpstream, tmp_path: Path, behaviour: str, error: type[Exception]
) -> None:
    model = openai_model(fresh, behaviour, retry=FAST_RETRY)
    async with groups(settings(tmp_path, {"m": model})) as (built, metrics):
        with pytest.raises(error):
            await built["m"](call())
    assert await upstream_calls(fresh) == 1
    assert sample(metrics, "guarita_retries_total", deployment="m") == 0


async def test_a_400_does_not_count_against_the_breaker(
    fresh: FakeUpstream, tmp_path: Path
) -> None:
    model = openai_model(fresh, "fail-400", breaker={"failure_threshold": 1})
    async with groups(settings(tmp_path, {"m": model})) as (built, _):
        for _ in range(3):
            with pytest.raises(InvalidRequest):
                await built["m"](call())
        breaker = built["m"].primary.breaker
        assert breaker is not None and await breaker.state() == "closed"
    assert await upstream_calls(fresh) == 3


async def test_a_retry_after_longer_than_max_delay_is_passed_on(
    fresh: FakeUpstream, tmp_path: Path
) -> None:
    model = openai_model(fresh, "fail-429", retry=FAST_RETRY)  # Retry-After: 7 > 5
    async with groups(settings(tmp_path, {"m": model})) as (built, _):
        with pytest.raises(UpstreamRateLimited) as raised:
            await built["m"](call())
    assert raised.value.retry_after == 7
    assert await upstream_calls(fresh) == 1


async def test_budget_caps_retries_of_a_burst_of_failing_calls(
    fresh: FakeUpstream, tmp_path: Path
) -> None:
    model = openai_model(
        fresh,
        "fail-500",
        retry={**FAST_RETRY, "max_attempts": 3, "budget_ratio": 0.2, "budget_min_retries": 3},
        breaker={"enabled": False},
    )
    async with groups(settings(tmp_path, {"m": model})) as (built, metrics):
        results = await asyncio.gather(
            *(built["m"](call()) for _ in range(100)), return_exceptions=True
        )
    assert all(isinstance(r, UpstreamError) for r in results)
    received = await upstream_calls(fresh)
    assert 100 + 3 <= received <= 100 + 20  # without a budget: up to 300
    assert sample(metrics, "guarita_retries_total", deployment="m") == received - 100
    assert sample(metrics, "guarita_retry_budget_exhausted_total", deployment="m") > 0


async def test_an_open_circuit_is_not_retried(fresh: FakeUpstream, tmp_path: Path) -> None:
    model = openai_model(
        fresh, "fail-500", retry={**FAST_RETRY, "max_attempts": 1}, breaker={"failure_threshold": 2}
    )
    async with groups(settings(tmp_path, {"m": model})) as (built, _):
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await built["m"](call())
        for _ in range(5):
            with pytest.raises(CircuitOpen):
                await built["m"](call())
    assert await upstream_calls(fresh) == 2


def test_quality_rejections_are_upstream_errors() -> None:
    # an empty or invalid answer may be worth one more try on the same deployment
    assert is_retryable(QualityRejected("empty"))


async def test_a_429_reaches_the_caller_with_its_retry_after(
    fresh: FakeUpstream, tmp_path: Path
) -> None:
    model = openai_model(fresh, "fail-429", retry=FAST_RETRY)
    async with serve(Runtime(settings(tmp_path, {"m": model}))) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert await upstream_calls(fresh) == 1
