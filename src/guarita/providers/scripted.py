"""A deterministic provider for tests and drills: fixed replies, delays and failures.

Options (``models.<name>.options``):
    reply: str            answer text; default echoes the last user message
    replies: [str]        answers used in turn
    echo: str             what the default answer echoes: user (the last user message) or
                          system (the system messages, joined by a space)
    delay_s: float        wait before answering (and between stream chunks: chunk_delay_s)
    fail_first: int       the first N calls fail
    fail_every: int       every Nth call fails
    error: str            what a failure raises: upstream | timeout | rate_limit | unavailable
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator

from guarita.errors import (
    ConfigError,
    GuaritaError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from guarita.providers.base import BaseProvider
from guarita.providers.common import chunk, completion_body, completion_id, message_text
from guarita.settings import ModelSettings
from guarita.types import Call, Chunk, Completion, Embeddings, Usage

_ERRORS: dict[str, type[GuaritaError]] = {
    "upstream": UpstreamError,
    "timeout": UpstreamTimeout,
    "rate_limit": UpstreamRateLimited,
    "unavailable": UpstreamUnavailable,
}


def _count_tokens(text: str) -> int:
    return len(text.split())


class ScriptedProvider(BaseProvider):
    name = "scripted"

    def __init__(self, model_name: str, settings: ModelSettings) -> None:
        super().__init__(model_name, settings)
        opts = settings.options
        replies = opts.get("replies")
        self._replies = itertools.cycle(replies) if replies else None
        self._reply: str | None = opts.get("reply")
        self._echo = str(opts.get("echo", "user"))
        if self._echo not in ("user", "system"):
            raise ConfigError(f"models.{model_name}.options.echo: user or system")
        self._delay = float(opts.get("delay_s", 0.0))
        self._chunk_delay = float(opts.get("chunk_delay_s", 0.0))
        self._fail_first = int(opts.get("fail_first", 0))
        self._fail_every = int(opts.get("fail_every", 0))
        error = str(opts.get("error", "upstream"))
        if error not in _ERRORS:
            raise ConfigError(
                f"models.{model_name}.options.error: unknown error kind {error!r}; "
                f"known: {', '.join(_ERRORS)}"
            )
        self._error = _ERRORS[error]
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        failing = self.calls <= self._fail_first or (
            self._fail_every > 0 and self.calls % self._fail_every == 0
        )
        if failing:
            raise self._error(f"scripted failure on call {self.calls}", retry_after=1)

    def _answer(self, call: Call) -> tuple[str, Usage]:
        if self._replies is not None:
            text = next(self._replies)
        elif self._reply is not None:
            text = self._reply
        else:
            echoed = [m for m in call.messages if m.get("role") == self._echo]
            if self._echo == "user":
                echoed = echoed[-1:]
            text = "echo: " + " ".join(message_text(m) for m in echoed)
        max_tokens = call.body.get("max_tokens") or call.body.get("max_completion_tokens")
        if max_tokens:
            text = " ".join(text.split(" ")[: int(max_tokens)])
        prompt = sum(_count_tokens(message_text(m)) for m in call.messages)
        return text, Usage(prompt, _count_tokens(text))

    async def complete(self, call: Call) -> Completion:
        if self._delay:
            await asyncio.sleep(self._delay)
        self._maybe_fail()
        text, usage = self._answer(call)
        body = completion_body(
            cid=completion_id(),
            model=self.upstream_model,
            text=text,
            finish_reason="stop",
            usage=usage,
        )
        return Completion(body=body, usage=usage, model=self.upstream_model)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        if self._delay:
            await asyncio.sleep(self._delay)
        self._maybe_fail()
        text, usage = self._answer(call)
        cid, model = completion_id(), self.upstream_model
        yield chunk(cid=cid, model=model, role="assistant", content="")
        for i, word in enumerate(text.split(" ")):
            if self._chunk_delay:
                await asyncio.sleep(self._chunk_delay)
            yield chunk(cid=cid, model=model, content=word if i == 0 else " " + word)
        yield chunk(cid=cid, model=model, finish_reason="stop")
        yield chunk(cid=cid, model=model, usage=usage)

    async def embed(self, inputs: list[str]) -> Embeddings:
        self._maybe_fail()
        vectors = []
        for text in inputs:
            digest = hashlib.sha256(text.encode()).digest()
            vectors.append([(b - 128) / 128 for b in digest[:16]])
        usage = Usage(sum(_count_tokens(t) for t in inputs), 0)
        return Embeddings(vectors=vectors, usage=usage, model=self.upstream_model)
