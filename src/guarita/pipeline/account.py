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

        def settle(done: Reply, _error: BaseException | None) -> None:
            # priced as the model that answered, which a fallback may have changed
            done.cost_usd = self._prices.get(done.served_by or call.model, FREE).cost(done.usage)

        reply.on_finish(settle)
        return reply
