"""The values that travel through the pipeline: who calls, what they ask, what comes back."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import structlog

from guarita.settings import TierLimits

if TYPE_CHECKING:  # the guard extra's
    from guarita.guard.pii import Redactor

_log = structlog.get_logger("guarita.pipeline")
_UNOWNED: set[asyncio.Task[None]] = set()
"""Hook tasks of replies without a ``spawn``, held until done (the loop keeps weak refs)."""

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
    ``limits`` are the key's own, over its tier's. ``roles`` decide what it may call
    (:func:`guarita.auth.require_role`); ``auth`` says how it was identified: ``key``,
    ``jwt`` (then ``subject`` is the token's ``sub`` and ``key_id`` is ``jwt:`` and a hash
    of its issuer and subject), or ``none`` (anonymous local use, with every role)."""

    key_id: str | None
    name: str
    tier: str
    limits: TierLimits | None = None
    roles: frozenset[str] = frozenset()
    subject: str | None = None
    auth: Literal["key", "jwt", "none"] = "key"

    @classmethod
    def anonymous(cls) -> Caller:
        return cls(
            key_id=None, name="anonymous", tier="local", roles=frozenset({"admin"}), auth="none"
        )


def new_record_id() -> str:
    return secrets.token_hex(16)


@dataclass(slots=True)
class RequestRecord:
    """One model call, as the store, the events and the log line all see it.

    Made with its :class:`Call` (so ``created_at`` is when the call began), annotated by
    the stages it passes (``tokens_saved``, ``route``, ``economy``, ``reserved_usd``,
    ``cache``), and completed once by Recording with the outcome. Its fields other than
    ``error_detail`` are the columns of the ``requests`` table; ``error_detail`` (what the
    caller was not told: upstream URL, status, exception) goes to the log line only.
    """

    request_id: str
    endpoint: str
    model: str
    """The model that was called: the requested one, or what routing or economy mode
    chose instead (``requested_model`` keeps what was asked)."""
    requested_model: str
    key_id: str | None = None
    agent: str | None = None
    stream: bool = False
    session_id: str | None = None
    record_id: str = field(default_factory=new_record_id)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "success"
    status_code: int = 200
    error_type: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    served_by: str | None = None
    deployment: str | None = None
    fallback_level: FallbackLevel | None = None
    quality: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reserved_usd: float = 0.0
    """The most the call could have cost, held against its budgets at admission."""
    latency_ms: float = 0.0
    tokens_saved: int = 0
    route: str | None = None
    """The complexity level that chose the model (``simple``, ``medium``, ``complex``)."""
    complexity: float | None = None
    economy: str | None = None
    """The budget scope whose economy mode the call ran in."""
    cache: str | None = None
    """``hit``, ``semantic-hit``, ``miss`` or ``bypass`` when a cache stage saw the call."""
    cache_saved_usd: float = 0.0
    """What a cache hit saved: the cached answer's cost at its model's prices."""
    cache_similarity: float | None = None
    """A semantic hit's cosine (the log line's, not a column)."""
    guard: dict[str, Any] | None = None
    """What the guards found, by guard (``input``, ``injection``, ``pii``, ``code``): kinds,
    counts, verdicts and scores, never a matched value."""
    prompt_name: str | None = None
    """The registry prompt the call rendered (with its version and content hash)."""
    prompt_version: int | None = None
    prompt_hash: str | None = None
    variant: str | None = None
    """``stable``, ``canary`` or ``shadow`` when a rollout chose the call's variant."""
    rollout_id: str | None = None
    scores: dict[str, float] | None = None
    """Quality score per scorer name (``quality`` is their combination)."""
    consistency: float | None = None
    answer_chars: int | None = None
    """The answer's length in characters (chat answers)."""
    refusal: bool | None = None
    """The answer opens as a refusal ("I'm sorry", "I cannot", ...)."""
    confidence: float | None = None
    """exp(mean token logprob) of the answer, when the provider returned logprobs."""
    error_detail: str | None = None

    def row(self) -> dict[str, Any]:
        """The ``requests`` table's columns."""
        row = {name: getattr(self, name) for name in _RECORD_COLUMNS}
        return row

    def event(self) -> dict[str, Any]:
        """The data of a ``guarita.request.completed`` event (JSON-ready)."""
        data = self.row()
        data["created_at"] = self.created_at.isoformat()
        return data

    def log_fields(self) -> dict[str, Any]:
        """What the request's log line adds about its model call: the outcome, and the
        annotations that are set."""
        fields_ = {
            "agent": self.agent,
            "model": self.model,
            "provider": self.provider,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tokens": self.input_tokens + self.output_tokens,
            "cost_usd": self.cost_usd,
            "fallback_level": self.fallback_level,
        }
        if self.requested_model != self.model:
            fields_["requested_model"] = self.requested_model
        for name in _RECORD_NOTES:
            value = getattr(self, name)
            if value:
                fields_[name] = value
        return fields_


# not columns of the requests table (error_detail goes to the log line only)
_NOT_COLUMNS = frozenset({"error_detail", "cache_similarity"})
_RECORD_COLUMNS = tuple(f.name for f in fields(RequestRecord) if f.name not in _NOT_COLUMNS)
_RECORD_NOTES = ("tokens_saved", "route", "complexity", "economy", "reserved_usd", "cache",
                 "cache_saved_usd", "cache_similarity", "guard", "prompt_name", "prompt_version",
                 "prompt_hash", "variant", "rollout_id", "scores", "consistency",
                 "answer_chars", "refusal", "confidence", "error_detail")  # fmt: skip


@dataclass(slots=True)
class RequestContext:
    """What one HTTP request knows about itself for its log line: made by the middleware,
    told the caller and the task by the handler, and the record of its model call by
    Recording (the last one, for a request that makes several)."""

    request_id: str
    key_id: str | None = None
    task_id: str | None = None
    record: RequestRecord | None = None

    def log_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": self.request_id}
        if self.key_id is not None:
            out["key_id"] = self.key_id
        if self.task_id is not None:
            out["task_id"] = self.task_id
        if self.record is not None:
            out.update(self.record.log_fields())
        return out


@dataclass(slots=True)
class Call:
    """One model call: an OpenAI-shaped request plus the context it runs in.

    ``body`` is the request minus ``model`` and ``stream``: the fields a provider sends on
    (for ``operation="embeddings"``: ``{"input": [str, ...]}``). ``record`` is the call's
    :class:`RequestRecord`, made with it; ``context``, when the call serves an HTTP request,
    is that request's, and learns the record when the call is over.
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
    context: RequestContext | None = None
    requested_max_tokens: int | None = None
    """What the caller itself asked for (``max_tokens`` or ``max_completion_tokens``),
    as opposed to an agent's default."""
    client_ip: str | None = None
    """The caller's address (behind a trusted proxy, from X-Forwarded-For)."""
    economy: bool = False
    """In economy mode (a budget is used up): the cache stage lengthens its TTLs."""
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers stages add to the answer (OpenAI's ``x-ratelimit-*``)."""
    cache_bypass: bool = False
    """The caller asked to skip the response cache's lookup (``Cache-Control: no-cache``)."""
    redactor: Redactor | None = None
    """Set by InputGuard when it redacted personal data: what the provider saw maps back
    to the caller's values through it (for this call only)."""
    record: RequestRecord = field(init=False)

    def __post_init__(self) -> None:
        self.record = RequestRecord(
            request_id=self.request_id,
            endpoint=self.endpoint,
            model=self.model,
            requested_model=self.model,
            key_id=self.caller.key_id,
            agent=self.agent,
            stream=self.stream,
            session_id=self.session_id,
        )

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
    confidence: float | None = None
    """exp(mean token logprob) of the answer, when the provider measured it itself
    (llama.cpp) rather than returning OpenAI ``logprobs``."""

    @property
    def text(self) -> str:
        try:
            content = self.body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError):
            return ""
        return content if isinstance(content, str) else ""


class FallbackLevel(StrEnum):
    """Where an answer came from, best first (docs/resilience.md)."""

    PRIMARY = "primary"
    """The model's first deployment."""
    DEPLOYMENT = "deployment"
    """Another deployment of the same model."""
    MODEL = "model"
    """A fallback model."""
    CACHE = "cache"
    RULES = "rules"
    """A configured rule's canned answer."""
    STATIC = "static"
    """The configured static reply."""


FinishHook = Callable[["Reply", BaseException | None], None]
AsyncFinishHook = Callable[["Reply", BaseException | None], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass(slots=True)
class Reply:
    """What the pipeline returns: a complete answer or a stream of chunks.

    Stages that need the whole answer of a stream (accounting, recording) register a
    ``on_finish`` hook; it runs once, when the stream ends or fails, without holding back
    the chunks the client is waiting for. A stage whose follow-up awaits (settling a
    reservation in the shared state) registers it with :meth:`after` instead.
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
    async_hooks: list[AsyncFinishHook] = field(default_factory=list)
    spawn: Spawn | None = None
    """Runs the async hooks of a stream when it ends, as a task that the runtime waits for
    at shutdown (Recording hands it in)."""
    finished: bool = False
    served_by: str | None = None
    """The configured model that answered (differs from the call's after a fallback)."""
    deployment: str | None = None
    fallback_level: FallbackLevel = FallbackLevel.PRIMARY
    quality: float = 1.0
    embeddings: Embeddings | None = None
    cache: str | None = None
    """``hit`` (or ``semantic-hit``) for an answer from the response cache."""
    reasoning: str = ""
    """The model's reasoning as the provider returned it (OpenAI-compatible
    ``reasoning_content``, Anthropic thinking blocks), kept for the reasoning log."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The answer's tool calls in the OpenAI shape; a stream's deltas merged by index."""

    @property
    def billed_usage(self) -> Usage:
        """The tokens this call consumed: none for a cache hit, whose usage is the cached
        answer's."""
        return Usage() if self.cache is not None else self.usage

    @property
    def is_stream(self) -> bool:
        return self.source is not None

    def on_finish(self, hook: FinishHook) -> None:
        """Run ``hook`` when the answer is complete (at once for a complete answer)."""
        if self.finished:
            hook(self, None)
        else:
            self.hooks.append(hook)

    async def after(self, hook: AsyncFinishHook) -> None:
        """Await ``hook`` once the answer is complete: now, for a complete answer; for a
        stream, when it ends, after the ``on_finish`` hooks, in a task of its own (``spawn``),
        so that the end of the stream never waits for it and a client that goes away cannot
        cut it short."""
        if self.finished:
            await hook(self, None)
        else:
            self.async_hooks.append(hook)

    def finish(self, error: BaseException | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        for hook in self.hooks:
            hook(self, error)
        if self.async_hooks:
            run = self._run_async_hooks(error)
            if self.spawn is not None:
                self.spawn(run)
            else:  # a reply that did not pass Recording (a stage tested alone)
                task = asyncio.get_running_loop().create_task(run)
                _UNOWNED.add(task)
                task.add_done_callback(_UNOWNED.discard)

    async def _run_async_hooks(self, error: BaseException | None) -> None:
        for hook in self.async_hooks:
            try:
                await hook(self, error)
            except Exception:  # noqa: BLE001 - one failing hook must not skip the others
                _log.exception("finish_hook_failed", hook=getattr(hook, "__qualname__", "?"))

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Iterate the stream, collecting text and usage, then run the finish hooks."""
        assert self.source is not None, "not a streamed reply"
        parts: list[str] = []
        thoughts: list[str] = []
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
                    if delta.get("reasoning_content"):
                        thoughts.append(str(delta["reasoning_content"]))
                    if delta.get("tool_calls"):
                        merge_tool_call_deltas(self.tool_calls, delta["tool_calls"])
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
                yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.text = "".join(parts)
            self.reasoning = "".join(thoughts)
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
            choice = completion.body["choices"][0]
            reply.finish_reason = choice.get("finish_reason")
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            reply.finish_reason, message = None, {}
        reasoning = message.get("reasoning_content") if isinstance(message, dict) else None
        reply.reasoning = reasoning if isinstance(reasoning, str) else ""
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        reply.tool_calls = (
            [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        )
        return reply


def merge_tool_call_deltas(calls: list[dict[str, Any]], deltas: Any) -> None:
    """Fold a stream's ``delta.tool_calls`` fragments into whole calls: the first fragment
    of an index carries its id and name, the following ones pieces of its arguments."""
    if not isinstance(deltas, list):
        return
    for delta in deltas:
        if not isinstance(delta, dict):
            continue
        index = delta.get("index", len(calls))
        if not isinstance(index, int) or not 0 <= index <= len(calls):
            continue
        if index == len(calls):
            calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        call, function = calls[index], delta.get("function") or {}
        call["id"] = call["id"] or delta.get("id")
        if isinstance(function, dict):
            call["function"]["name"] += str(function.get("name") or "")
            call["function"]["arguments"] += str(function.get("arguments") or "")
