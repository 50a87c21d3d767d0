"""Accounting: the cost of a call, from the model's price and the usage it reported."""

from __future__ import annotations

from collections.abc import Mapping

from guarita.pipeline import Next
from guarita.telemetry.prices import FREE, Price
from guarita.types import Call, Reply


class Accounting:
    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = prices

    async def __call__(self, call: Call, next: Next) -> Reply:
        reply = await next(call)
        price = self._prices.get(call.model, FREE)

        def settle(done: Reply, _error: BaseException | None) -> None:
            done.cost_usd = price.cost(done.usage)

        reply.on_finish(settle)
        return reply
