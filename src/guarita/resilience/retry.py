"""Retries: exponential backoff with full jitter, only for errors worth retrying, within
the call's deadline and a retry budget per upstream.

The budget (as in Finagle and gRPC) keeps retries from multiplying load during an outage:
over a sliding window, retries may add at most ``ratio`` of the calls made (plus a small
floor so that a quiet upstream can still be retried).
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass

from guarita.errors import (
    GuaritaError,
    ServiceUnavailable,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    budget_ratio: float = 0.2
    budget_min_retries: int = 3
    budget_window_s: float = 10.0


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, 429 and 5xx: yes. Anything the request caused: no."""
    if isinstance(exc, UpstreamAuthFailed):
        return False  # our key is wrong; asking again will not fix it
    return isinstance(
        exc, UpstreamError | UpstreamTimeout | UpstreamRateLimited | ServiceUnavailable
    )


def backoff_delay(attempt: int, policy: RetryPolicy, error: BaseException | None = None) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^attempt)], at least a Retry-After."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    delay = random.uniform(0, ceiling)
    if isinstance(error, GuaritaError) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return delay


class RetryBudget:
    """Calls and retries to one upstream over a sliding window, in this process."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._calls: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.refused = 0

    def _trim(self, now: float) -> None:
        horizon = now - self._policy.budget_window_s
        for times in (self._calls, self._retries):
            while times and times[0] < horizon:
                times.popleft()

    def record_call(self) -> None:
        self._calls.append(time.monotonic())

    def try_spend(self) -> bool:
        """Take one retry from the budget, if there is one left."""
        now = time.monotonic()
        self._trim(now)
        allowed = max(self._policy.budget_min_retries, self._policy.budget_ratio * len(self._calls))
        if len(self._retries) >= allowed:
            self.refused += 1
            return False
        self._retries.append(now)
        return True
