"""Prices per 1M tokens, and what a call, a request mix or a month costs.

The table covers common hosted models (USD list prices, per 1M input / output tokens)
and the local model (free). A model in ``guarita.yaml`` may set its own prices; when it
does not, its upstream name is looked up here.
"""

from __future__ import annotations

from dataclasses import dataclass

from guarita.settings import ModelSettings
from guarita.types import Usage


@dataclass(slots=True, frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_1m + usage.output_tokens * self.output_per_1m
        ) / 1_000_000


FREE = Price(0.0, 0.0)

PRICE_TABLE: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3-mini": Price(1.10, 4.40),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-haiku": Price(0.25, 1.25),
    "claude-opus-4": Price(15.00, 75.00),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "gemma3-270m": FREE,
    "smollm2-135m": FREE,
}


def lookup(name: str) -> Price | None:
    """Exact name, else the longest table entry the name starts with (dated snapshots)."""
    if name in PRICE_TABLE:
        return PRICE_TABLE[name]
    matches = [key for key in PRICE_TABLE if name.startswith(key)]
    return PRICE_TABLE[max(matches, key=len)] if matches else None


def price_for(model_name: str, settings: ModelSettings) -> Price:
    if settings.price_input_per_1m is not None or settings.price_output_per_1m is not None:
        return Price(settings.price_input_per_1m or 0.0, settings.price_output_per_1m or 0.0)
    if settings.provider in ("llamacpp", "scripted"):
        return FREE
    return lookup(settings.upstream or model_name) or lookup(model_name) or FREE


@dataclass(slots=True, frozen=True)
class Projection:
    per_request: float
    per_day: float
    per_month: float


def project(
    price: Price, *, daily_requests: int, input_tokens: int, output_tokens: int, days: int = 30
) -> Projection:
    """The source document's projection: cost per request, times requests per day, times 30 days."""
    per_request = price.cost(Usage(input_tokens, output_tokens))
    per_day = per_request * daily_requests
    return Projection(per_request, per_day, per_day * days)
