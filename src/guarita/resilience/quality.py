"""Quality checks on a model's answer: the AI part of a circuit breaker.

An answer can arrive and still be a failure: too slow, empty, cut off, not the JSON that
was asked for, a refusal, or scored low by a pluggable scorer. Such failures count
against the deployment's breaker; answers that are unusable are also rejected so that
the fallback chain can try the next level.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from guarita.types import Call

Scorer = Callable[[Call, str], float]
"""Scores an answer from 0 (useless) to 1 (perfect)."""

REFUSAL = re.compile(
    r"^\s*(I'?m sorry|I am sorry|I cannot|I can'?t|I am unable|I'?m unable|As an AI)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    max_latency_ms: float | None = None
    reject_empty: bool = True
    reject_truncated: bool = False
    reject_invalid_json: bool = True
    reject_refusals: bool = False
    min_score: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str | None = None
    reject: bool = False
    """The answer is unusable: try the next fallback level instead of returning it."""


def wants_json(call: Call) -> bool:
    fmt = call.body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def judge(
    call: Call,
    text: str,
    finish_reason: str | None,
    latency_ms: float,
    policy: QualityPolicy,
    scorer: Scorer | None = None,
) -> Verdict:
    """The first quality failure of an answer, if any."""
    if policy.reject_empty and not text.strip() and finish_reason != "tool_calls":
        return Verdict(False, "empty", reject=True)
    if policy.reject_truncated and finish_reason == "length":
        return Verdict(False, "truncated", reject=True)
    if policy.reject_invalid_json and wants_json(call):
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            return Verdict(False, "invalid_json", reject=True)
    if policy.reject_refusals and REFUSAL.match(text):
        return Verdict(False, "refusal", reject=True)
    if (
        policy.min_score is not None
        and scorer is not None
        and scorer(call, text) < policy.min_score
    ):
        return Verdict(False, "low_score", reject=True)
    if policy.max_latency_ms is not None and latency_ms > policy.max_latency_ms:
        return Verdict(False, "slow")  # a slow answer is still an answer
    return Verdict(True)
