"""The fallback chain, and the deadline that bounds it.

Levels, tried in order until one answers, each with a lower quality score:

    primary     1.0   the model's first deployment
    deployment  0.9   another deployment of the same model (``group.py``)
    model       0.7   a fallback model (cheaper, smaller, or with a larger context window)
    rules       0.4   a configured pattern → reply
    static      0.1   a fixed message

The whole chain runs within the call's deadline; when it expires the chain stops calling
models and answers from rules or the static message (or 504 if neither is configured).
A context-window error skips retries and goes to a fallback model with a larger window.
(The cache level slots in between model and rules once a response cache exists.)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from guarita.errors import DeadlineExceeded, GuaritaError, InvalidRequest
from guarita.pipeline import Next
from guarita.providers.common import chunk, completion_body, completion_id, message_text
from guarita.settings import ModelSettings, RuleSettings
from guarita.types import Call, Chunk, Completion, FallbackLevel, Reply, Usage

QUALITY = {
    FallbackLevel.PRIMARY: 1.0,
    FallbackLevel.DEPLOYMENT: 0.9,
    FallbackLevel.MODEL: 0.7,
    FallbackLevel.CACHE: 0.6,
    FallbackLevel.RULES: 0.4,
    FallbackLevel.STATIC: 0.1,
}


def is_context_error(exc: BaseException) -> bool:
    if not isinstance(exc, InvalidRequest):
        return False
    if exc.code == "context_length_exceeded":
        return True
    message = exc.message.lower()
    return (
        "context length" in message or "context window" in message or "maximum context" in message
    )


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: re.Pattern[str]
    reply: str


class FallbackChain:
    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        agent_fallbacks: Mapping[str, Sequence[str] | None],
        *,
        rules: Sequence[RuleSettings] = (),
        static_reply: str | None = None,
        cached: Callable[[Call], Awaitable[Reply | None]] | None = None,
    ) -> None:
        self._cached = cached
        self._models = models
        self._agent_fallbacks = agent_fallbacks
        self._rules = [Rule(re.compile(r.pattern, re.IGNORECASE), r.reply) for r in rules]
        self._static = static_reply

    def _candidates(self, call: Call, error: BaseException) -> list[str]:
        chain = self._agent_fallbacks.get(call.agent or "") if call.agent else None
        names = list(chain if chain is not None else self._models[call.model].fallbacks)
        if is_context_error(error):
            window = self._models[call.model].context_window
            names = [n for n in names if self._models[n].context_window > window]
        return names

    async def __call__(self, call: Call, next: Next) -> Reply:
        try:
            reply = await _within(call.deadline, next(call))
            return _at_level(reply, reply.fallback_level)
        except GuaritaError as exc:
            if isinstance(exc, InvalidRequest) and not is_context_error(exc):
                raise
            error: GuaritaError = exc
        if call.operation != "chat":
            raise error  # fallback models, rules and static answers are chat answers
        for name in self._candidates(call, error):
            if _expired(call.deadline):
                break
            try:
                reply = await _within(call.deadline, next(replace(call, model=name)))
            except GuaritaError as exc:
                error = exc
                continue
            return _at_level(reply, FallbackLevel.MODEL)
        if self._cached is not None:
            stored = await self._cached(call)  # the response cache's answer, even stale
            if stored is not None:
                return _at_level(stored, FallbackLevel.CACHE)
        answer = self._rule_answer(call)
        if answer is not None:
            return _at_level(canned(call, answer, "rules"), FallbackLevel.RULES)
        if self._static is not None:
            return _at_level(canned(call, self._static, "static"), FallbackLevel.STATIC)
        raise error

    def _rule_answer(self, call: Call) -> str | None:
        users = [m for m in call.messages if m.get("role") == "user"]
        text = message_text(users[-1]) if users else ""
        for rule in self._rules:
            if rule.pattern.search(text):
                return rule.reply
        return None


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


async def _within(deadline: float | None, awaitable: asyncio.Future[Reply] | object) -> Reply:
    if deadline is None:
        return await awaitable  # type: ignore[misc, no-any-return]
    try:
        async with asyncio.timeout_at(deadline):
            return await awaitable  # type: ignore[misc, no-any-return]
    except TimeoutError:
        raise DeadlineExceeded("the request's deadline expired before a model answered") from None


def _at_level(reply: Reply, level: FallbackLevel) -> Reply:
    reply.fallback_level = level
    reply.quality = QUALITY[level]
    return reply


def canned(call: Call, text: str, source: str) -> Reply:
    """An answer Guarita gives itself, shaped like a model's, streamed if asked."""
    cid = completion_id()
    if not call.stream:
        body = completion_body(
            cid=cid, model=source, text=text, finish_reason="stop", usage=Usage()
        )
        reply = Reply.complete(source, Completion(body=body, usage=Usage(), model=source))
    else:
        reply = Reply(model=source, provider=source, source=_canned_stream(cid, source, text))
    reply.served_by = call.model
    return reply


async def _canned_stream(cid: str, model: str, text: str) -> AsyncIterator[Chunk]:
    yield chunk(cid=cid, model=model, role="assistant", content="")
    yield chunk(cid=cid, model=model, content=text)
    yield chunk(cid=cid, model=model, finish_reason="stop")
    yield chunk(cid=cid, model=model, usage=Usage())
