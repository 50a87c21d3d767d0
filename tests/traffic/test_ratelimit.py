"""The rate-limit stage on the in-process shared state: admission, refusals in OpenAI's
format, headers, the per-request token cap, models, concurrency, per-address limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from guarita.errors import (
    InvalidRequest,
    ModelNotAllowed,
    RateLimitExceeded,
    ServiceUnavailable,
)
from guarita.pipeline import compose
from guarita.providers.common import chunk
from guarita.settings import LimitSettings, TierLimits
from guarita.state import Limit
from guarita.state.memory import MemorySharedState
from guarita.traffic.ratelimit import (
    RateLimits,
    client_address,
    estimate_prompt_tokens,
    plan_for,
    rate_limit_headers,
)
from guarita.types import Call, Caller, Completion, Reply, Usage


def call(
    *, key: str | None = "k1", tier: str = "t", own: TierLimits | None = None,
    max_tokens: int | None = None, ip: str | None = "10.0.0.1", model: str = "m",
    endpoint: str = "chat.completions", text: str = "hello there",
) -> Call:  # fmt: skip
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return Call(
        request_id="r",
        model=model,
        body=body,
        caller=Caller(key_id=key, name="n", tier=tier, limits=own),
        endpoint=endpoint,
        requested_max_tokens=max_tokens,
        client_ip=ip,
    )


def frozen() -> float:
    """5 s into a minute, and it stays there: these tests count within one fixed window."""
    return 1_800_000_005.0


def stage(**tier: Any) -> tuple[RateLimits, MemorySharedState]:
    state = MemorySharedState(clock=frozen)
    settings = LimitSettings(tiers={"t": TierLimits(**tier)})
    return RateLimits(state, settings, max_deadline_s=60), state


async def answer(call: Call) -> Reply:
    return Reply.complete("p", Completion(body={}, usage=Usage(5, 5), model="m"))


async def test_requests_per_minute_admit_exactly_the_limit_then_refuse() -> None:
    limits, _ = stage(requests_per_minute=3)
    pipeline = compose([limits], answer)
    results = await asyncio.gather(*(pipeline(call()) for _ in range(10)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Reply)]
    refused = [r for r in results if isinstance(r, RateLimitExceeded)]
    assert len(admitted) == 3 and len(refused) == 7
    error = refused[0]
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert "requests per minute" in error.message and "limit 3" in error.message
    headers = error.headers()
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    await limits.aclose()


async def test_an_admitted_call_carries_openai_headers() -> None:
    limits, _ = stage(requests_per_minute=10, tokens_per_minute=1000)
    admitted = call(max_tokens=50)
    await compose([limits], answer)(admitted)
    headers = admitted.response_headers
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    estimate = estimate_prompt_tokens(admitted) + 50
    assert headers["x-ratelimit-remaining-tokens"] == str(1000 - estimate)
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    await limits.aclose()


async def test_tokens_are_settled_with_what_was_used() -> None:
    limits, state = stage(tokens_per_minute=1000)
    await compose([limits], answer)(call(max_tokens=400))
    await limits.aclose()  # settlements in flight done
    token = Limit("{key:k1}:tpm", 1000, "minute")
    (counter,) = await state.usage([token])
    assert (counter.used, counter.held) == (10, 0)  # usage 5 + 5, not the 400 estimated


async def test_a_request_larger_than_the_token_limit_alone_is_refused() -> None:
    limits, _ = stage(tokens_per_minute=100)
    with pytest.raises(RateLimitExceeded) as caught:
        await compose([limits], answer)(call(max_tokens=500))
    assert "alone" in caught.value.message and "Retry-After" not in caught.value.headers()


async def test_max_tokens_above_the_cap_is_a_400_naming_the_field() -> None:
    limits, _ = stage(max_tokens=1000)
    with pytest.raises(InvalidRequest) as caught:
        await compose([limits], answer)(call(max_tokens=1001))
    assert caught.value.param == "max_tokens" and caught.value.status_code == 400
    capped = call()
    await compose([limits], answer)(capped)
    assert capped.body["max_tokens"] == 1000  # absent: the tier's limit applies
    agent_default = call()
    agent_default.body["max_tokens"] = 4096  # an agent's own default, not the caller's ask
    await compose([limits], answer)(agent_default)
    assert agent_default.body["max_tokens"] == 1000


async def test_models_a_tier_may_not_use_are_refused() -> None:
    limits, _ = stage(models=["m"])
    await compose([limits], answer)(call(model="m"))
    with pytest.raises(ModelNotAllowed) as caught:
        await compose([limits], answer)(call(model="other"))
    assert caught.value.status_code == 403 and caught.value.code == "model_not_allowed"


async def test_concurrent_requests_are_bounded_while_streams_run() -> None:
    limits, _ = stage(concurrent_requests=2)
    release = asyncio.Event()

    async def streaming(c: Call) -> Reply:
        async def source() -> AsyncIterator[dict[str, Any]]:
            await release.wait()
            yield chunk(cid="c", model="m", content="x", finish_reason="stop")

        return Reply(model="m", provider="p", source=source())

    pipeline = compose([limits], streaming)
    first, second = await pipeline(call()), await pipeline(call())
    with pytest.raises(RateLimitExceeded) as caught:
        await pipeline(call())
    assert "concurrent" in caught.value.message
    release.set()
    for reply in (first, second):
        async for _ in reply.chunks():
            pass
    await limits.aclose()
    await pipeline(call())  # the slots are back


async def test_a_key_overrides_its_tier() -> None:
    limits, _ = stage(requests_per_day=10)
    pipeline = compose([limits], answer)
    own = TierLimits(requests_per_minute=2)
    await pipeline(call(own=own))
    await pipeline(call(own=own))
    with pytest.raises(RateLimitExceeded):
        await pipeline(call(own=own))


async def test_the_per_address_limit_holds_for_anonymous_callers_too() -> None:
    state = MemorySharedState(clock=frozen)
    limits = RateLimits(state, LimitSettings(per_ip_per_minute=2), max_deadline_s=60)
    pipeline = compose([limits], answer)
    anonymous = {"key": None, "tier": "local"}
    await pipeline(call(**anonymous, ip="10.0.0.9"))
    await pipeline(call(**anonymous, ip="10.0.0.9"))
    with pytest.raises(RateLimitExceeded):
        await pipeline(call(**anonymous, ip="10.0.0.9"))
    await pipeline(call(**anonymous, ip="10.0.0.10"))  # another address
    await pipeline(call(**anonymous, ip="10.0.0.9", endpoint="embeddings"))  # not a chat route


async def test_tasks_are_counted_when_accepted_not_when_run() -> None:
    limits, _ = stage(requests_per_minute=1)
    headers = await limits.admit_submission(call(endpoint="api.chat"))
    assert headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimitExceeded):
        await limits.admit_submission(call(endpoint="api.chat"))
    await compose([limits], answer)(call(endpoint="task"))  # the worker's call passes


async def test_limits_that_cannot_be_checked_refuse() -> None:
    class Broken(MemorySharedState):
        async def reserve(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("shared state down")

    limits = RateLimits(
        Broken(), LimitSettings(tiers={"t": TierLimits(requests_per_minute=5)}), max_deadline_s=60
    )
    with pytest.raises(ServiceUnavailable) as caught:
        await compose([limits], answer)(call())
    assert caught.value.status_code == 503 and "ConnectionError" not in caught.value.message


def test_the_headers_follow_openai_reset_format() -> None:
    plan = plan_for(call(), TierLimits(requests_per_minute=60), per_ip=None, ip_endpoints=(),
                    tokens=0)  # fmt: skip
    assert plan.requests is not None
    from guarita.state import UNITS_PER_ONE, Admission

    now_ms = 1_800_000_000_000  # 125.2 s before the end of its window
    admission = Admission(True, "r", plan.limits, [UNITS_PER_ONE, 0, now_ms + 125_200], now_ms)
    headers = rate_limit_headers(plan, admission)
    assert headers["x-ratelimit-reset-requests"] == "2m6s"
    assert headers["x-ratelimit-remaining-requests"] == "59"


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("10.0.0.1", None, [], "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4", [], "10.0.0.1"),  # no trusted proxy: the header is ignored
        ("10.0.0.1", "1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.1", "6.6.6.6, 1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),  # left part is forgeable
        ("10.0.0.1", "1.2.3.4, 10.0.0.2", ["10.0.0.0/8"], "1.2.3.4"),  # two proxies
        ("192.0.2.1", "1.2.3.4", ["10.0.0.0/8"], "192.0.2.1"),  # an untrusted peer
    ],
)
def test_client_address_behind_trusted_proxies(
    peer: str, forwarded: str | None, trusted: list[str], expected: str
) -> None:
    assert client_address(peer, forwarded, trusted) == expected
