"""Budget alerts: when a budget's spend (settled plus held) crosses a threshold (50 %, 80 %,
100 % by default), say so once per budget, threshold and period, whichever process sees it
first: an event (``guarita.budget.threshold``), a metric, a log line and, if configured, a
webhook. At 100 % the budget also refuses (429 ``insufficient_quota``: ``ratelimit.py``).

Checked at admission from the counters the reservation already returned, so it costs no
round trip; "once" is decided in the shared state (``incr`` with the period's TTL), so
several processes never alert twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson
import structlog

from guarita.state import Admission, CounterState, Values

log = structlog.get_logger("guarita.budgets")

BUDGET_THRESHOLD = "guarita.budget.threshold"
_WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=5)


class BudgetAlerts:
    def __init__(
        self,
        state: Values,
        *,
        thresholds: Sequence[float],
        publish: Callable[[str, dict[str, Any]], None],
        count: Callable[[str, str], None],
        webhook_url: str | None = None,
    ) -> None:
        self._state = state
        self._thresholds = tuple(sorted(thresholds))
        self._publish = publish
        self._count = count
        self._webhook = webhook_url
        self._seen: set[tuple[str, float | None, float]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def check(self, admission: Admission, spend_from: int) -> None:
        """After an admission: alert for every threshold a spend counter has reached (the
        admission's limits from ``spend_from`` on are the call's budgets). A counter's
        state is made only once its fill reaches the lowest threshold."""
        lowest = self._thresholds[0] if self._thresholds else math.inf
        for index in range(spend_from, admission.limit_count):
            share = admission.share(index)
            if share < lowest:
                continue
            state = admission.counter(index)
            for threshold in self._thresholds:
                if share < threshold:
                    break
                seen = (state.limit.counter, state.reset_at, threshold)
                if seen in self._seen:
                    continue
                if len(self._seen) > 10_000:
                    self._seen.clear()
                self._seen.add(seen)
                task = asyncio.get_running_loop().create_task(self._alert(state, threshold, share))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _alert(self, state: CounterState, threshold: float, share: float) -> None:
        counter = state.limit.counter
        period_ttl = state.reset_after_s + 60 if state.reset_after_s is not None else 86_400
        once = f"budget-alert:{counter}:{state.reset_at}:{threshold}"
        try:
            if await self._state.incr(once, 1, period_ttl) != 1:
                return  # another process alerted first
        except Exception as exc:  # noqa: BLE001 - an alert must never fail a request
            log.warning("budget_alert_dedupe_failed", error_type=type(exc).__name__)
        scope, _, period = counter.partition(":usd-")
        budget = scope.strip("{}")
        data: dict[str, Any] = {
            "budget": budget,
            "period": period,
            "threshold": threshold,
            "share": round(share, 4),
            "limit_usd": state.limit.capacity,
            "spent_usd": round(state.used, 6),
            "held_usd": round(state.held, 6),
            "resets_in_s": state.reset_after_s,
        }
        self._count(budget, f"{threshold:g}")
        self._publish(BUDGET_THRESHOLD, data)
        log.warning("budget_threshold_reached", **data)
        if self._webhook:
            await self._post(data)

    async def _post(self, data: dict[str, Any]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=_WEBHOOK_TIMEOUT)
        assert self._webhook is not None
        try:
            async with self._session.post(
                self._webhook,
                data=orjson.dumps({"type": BUDGET_THRESHOLD, "data": data}),
                headers={"content-type": "application/json"},
            ) as response:
                if response.status >= 300:
                    log.warning("budget_webhook_refused", status=response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("budget_webhook_failed", error_type=type(exc).__name__)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            with contextlib.suppress(aiohttp.ClientError):
                await self._session.close()
