"""Consistency: an agent's call answered N times, and how much the answers agree.

Agreement is the mean pairwise semantic similarity of the trials' answers
(:func:`consistency`, also the rollouts' metric). :class:`ConsistencyStage` sits just inside
Recording, so the N trials are one request with one record: every trial passes the rate
limits and accounting (the caller is charged for N calls, and the record's tokens and cost
are the trials' sum), the session is written once by the agent service, and the record
carries ``consistency``. Below the agent's threshold:

* ``flag``: the first trial's answer, with ``x-guarita-consistency: <score>; low``;
* ``fallback``: the agent's first fallback model answers (fallback level ``model``), else
  the configured static reply (level ``static``), else the answer is flagged as above.

A trial other than the first that failed, or that a fallback level answered (another
model, rules, the static reply), is left out of the comparison (the header says
``unknown`` when no second answer is left); the first trial's failure is the call's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence

from guarita.pipeline import Next
from guarita.resilience.fallback import QUALITY, canned
from guarita.settings import Settings
from guarita.settings_quality import ConsistencySettings
from guarita.types import Call, FallbackLevel, Reply, Usage

HEADER = "x-guarita-consistency"
_MODEL_LEVELS = (FallbackLevel.PRIMARY, FallbackLevel.DEPLOYMENT)

SimilarityFn = Callable[[str, str], Awaitable[float]]


async def consistency(answers: Sequence[str], similarity: SimilarityFn) -> float:
    """Mean pairwise similarity of ``answers`` (1.0 for fewer than two)."""
    pairs = list(itertools.combinations(answers, 2))
    if not pairs:
        return 1.0
    values = await asyncio.gather(*(similarity(a, b) for a, b in pairs))
    return round(sum(values) / len(values), 6)


def _plus(a: Usage, b: Usage) -> Usage:
    return Usage(a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens)


def _trial(call: Call, index: int, *, model: str | None = None) -> Call:
    """A copy of ``call`` with its own record, headers and messages (stages change them)."""
    body = {**call.body, "messages": [dict(m) for m in call.messages]}
    return dataclasses.replace(
        call,
        request_id=f"{call.request_id}-t{index}",
        model=model or call.model,
        body=body,
        response_headers={},
        context=None,
    )


class ConsistencyStage:
    def __init__(
        self,
        settings: Settings,
        similarity: SimilarityFn,
        *,
        on_score: Callable[[str, float, bool], None] = lambda agent, score, low: None,
    ) -> None:
        self._agents: Mapping[str, ConsistencySettings] = {
            n: a.consistency for n, a in settings.agents.items() if a.consistency is not None
        }
        self._fallbacks = {n: a.fallbacks or [] for n, a in settings.agents.items()}
        self._static = settings.resilience.static_reply
        self._similarity = similarity
        self._on_score = on_score

    async def __call__(self, call: Call, next: Next) -> Reply:
        policy = self._agents.get(call.agent or "")
        if policy is None or call.stream or call.operation != "chat":
            return await next(call)
        trials = [_trial(call, i) for i in range(1, policy.trials)]
        outcomes = await asyncio.gather(
            next(call), *(next(t) for t in trials), return_exceptions=True
        )
        reply = outcomes[0]
        if isinstance(reply, BaseException):
            raise reply  # the call itself failed: as without the check
        others = [r for r in outcomes[1:] if isinstance(r, Reply)]
        for other in others:
            reply.usage = _plus(reply.usage, other.usage)
            reply.cost_usd += other.cost_usd
        # a trial a fallback level answered is not a sample of the agent's model
        replies = [reply, *(r for r in others if r.fallback_level in _MODEL_LEVELS)]
        if len(replies) < 2:  # every other trial failed: nothing to compare
            call.response_headers[HEADER] = "unknown"
            return reply
        score = await consistency([r.text for r in replies], self._similarity)
        low = score < policy.threshold
        assert call.agent is not None
        self._on_score(call.agent, score, low)
        if hasattr(call.record, "consistency"):
            call.record.consistency = score
        if not low:
            call.response_headers[HEADER] = f"{score:.3f}"
            return reply
        if policy.on_low == "fallback":
            fallback = await self._fallback(call, reply, next)
            if fallback is not None:
                call.response_headers[HEADER] = f"{score:.3f}; low; fallback"
                return fallback
        call.response_headers[HEADER] = f"{score:.3f}; low"
        return reply

    async def _fallback(self, call: Call, first: Reply, next: Next) -> Reply | None:
        models = self._fallbacks.get(call.agent or "") or []
        if models:
            reply = await next(_trial(call, 0, model=models[0]))
            reply.usage = _plus(reply.usage, first.usage)
            reply.cost_usd += first.cost_usd
            reply.served_by = reply.served_by or models[0]
            reply.fallback_level = FallbackLevel.MODEL
            reply.quality = QUALITY[FallbackLevel.MODEL]
            return reply
        if self._static is not None:
            reply = canned(call, self._static, "static")
            reply.fallback_level = FallbackLevel.STATIC
            reply.quality = QUALITY[FallbackLevel.STATIC]
            reply.usage, reply.cost_usd = first.usage, first.cost_usd
            return reply
        return None
