"""The values that travel through the pipeline: who calls, what they ask, what comes back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from guarita.settings import TierLimits

Chunk = dict[str, Any]
"""One OpenAI ``chat.completion.chunk`` object."""


@dataclass(slots=True, frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        if not usage:
            return cls()
        return cls(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


@dataclass(slots=True)
class Embeddings:
    """A provider's vectors, one per input, in input order."""

    vectors: list[list[float]]
    usage: Usage
    model: str


Operation = Literal["chat", "embeddings"]


@dataclass(slots=True, frozen=True)
class Caller:
    """The authenticated identity behind a call; ``key_id`` is None for anonymous local use.
    ``limits`` are the key's own, over its tier's."""

    key_id: str | None
    name: str
    tier: str
    limits: TierLimits | None = None

    @classmethod
    def anonymous(cls) -> Caller:
        return cls(key_id=None, name="anonymous", tier="local")


@dataclass(slots=True)
class Call:
    """One model call: an OpenAI-shaped request plus the context it runs in.

    ``body`` is the request minus ``model`` and ``stream``: the fields a provider sends on
    (for ``operation="embeddings"``: ``{"input": [str, ...]}``). ``info`` collects what the
    per-request log line and the request record report.
    """

    request_id: str
    model: str
    body: dict[str, Any]
    caller: Caller
    stream: bool = False
    include_usage: bool = False
    agent: str | None = None
    endpoint: str = "chat.completions"
    operation: Operation = "chat"
    session_id: str | None = None
    deadline: float | None = None
    """When the whole call must be over, in ``time.monotonic()`` seconds."""
    started: float = field(default_factory=time.perf_counter)
    info: dict[str, Any] = field(default_factory=dict)
    requested_max_tokens: int | None = None
    """What the caller itself asked for (``max_tokens`` or ``max_completion_tokens``),
    as opposed to an agent's default."""
    client_ip: str | None = None
    """The caller's address (behind a trusted proxy, from X-Forwarded-For)."""
    economy: bool = False
    """In economy mode (a budget is used up): the cache stage lengthens its TTLs."""
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers stages add to the answer (OpenAI's ``x-ratelimit-*``)."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body.get("messages") or []
        return messages

    @property
    def inputs(self) -> list[str]:
        """The texts of an embeddings call."""
        inputs: list[str] = self.body["input"]
        return inputs


@dataclass(slots=True)
class Completion:
    """A provider's complete answer. ``raw`` holds the upstream bytes when they can be
    passed through unchanged, so the hot path does not re-serialise them."""

    body: dict[str, Any]
    usage: Usage
    model: str
    raw: bytes | None = None

    @property
    def text(self) -> str:
        try:
            content = self.body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError):
            return ""
        return content if isinstance(content, str) else ""


FinishHook = Callable[["Reply", BaseException | None], None]


@dataclass(slots=True)
class Reply:
    """What the pipeline returns: a complete answer or a stream of chunks.

    Stages that need the whole answer of a stream (accounting, recording) register a
    ``on_finish`` hook; it runs once, when the stream ends or fails, without holding back
    the chunks the client is waiting for.
    """

    model: str
    provider: str
    completion: Completion | None = None
    source: AsyncIterator[Chunk] | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    text: str = ""
    finish_reason: str | None = None
    hooks: list[FinishHook] = field(default_factory=list)
    finished: bool = False
    served_by: str | None = None
    """The configured model that answered (differs from the call's after a fallback)."""
    deployment: str | None = None
    fallback_level: str = "primary"
    quality: float = 1.0
    embeddings: Embeddings | None = None

    @property
    def is_stream(self) -> bool:
        return self.source is not None

    def on_finish(self, hook: FinishHook) -> None:
        """Run ``hook`` when the answer is complete (at once for a complete answer)."""
        if self.finished:
            hook(self, None)
        else:
            self.hooks.append(hook)

    def finish(self, error: BaseException | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        for hook in self.hooks:
            hook(self, error)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Iterate the stream, collecting text and usage, then run the finish hooks."""
        assert self.source is not None, "not a streamed reply"
        parts: list[str] = []
        error: BaseException | None = None
        try:
            async for chunk in self.source:
                usage = chunk.get("usage")
                if usage:
                    self.usage = Usage.from_openai(usage)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if content:
                        parts.append(content)
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
                yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.text = "".join(parts)
            self.finish(error)

    @classmethod
    def embedded(cls, provider: str, embeddings: Embeddings) -> Reply:
        """The answer of an embeddings call."""
        return cls(model=embeddings.model, provider=provider, usage=embeddings.usage,
                   embeddings=embeddings, finished=True)  # fmt: skip

    @classmethod
    def complete(cls, provider: str, completion: Completion) -> Reply:
        reply = cls(model=completion.model, provider=provider, completion=completion, finished=True)
        reply.usage = completion.usage
        reply.text = completion.text
        try:
            reply.finish_reason = completion.body["choices"][0].get("finish_reason")
        except (KeyError, IndexError, TypeError):
            reply.finish_reason = None
        return reply
