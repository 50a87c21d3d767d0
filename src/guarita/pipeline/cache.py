"""The response cache stage: an exact hit short-circuits the call (docs/cache.md).

It runs inside the rate limits (a hit counts as a request there, with no tokens and no
cost) and outside Accounting and the fallbacks (a hit is never priced, and only an answer
of the model itself is stored). Per model or agent, off unless its ``cache`` policy says
``exact``: which temperatures may be cached, for how long, and who shares the entries
(each API key its own namespace by default; an agent's callers together on request).

* A hit answers the cached ``chat.completion`` (a new id) or, for ``stream: true``, replays
  it as SSE chunks ending with usage; ``x-guarita-cache: hit``, and the record says
  ``cache: hit`` with the cost the hit saved (``guarita_cache_saved_usd_total``).
* A miss (``x-guarita-cache: miss``) is stored once its answer is complete: a complete
  answer at once, a stream when it ended with a finish reason. An answer cut off, refused,
  filtered, or from a fallback level other than the model's own deployments is not stored.
* ``Cache-Control: no-cache`` (or ``no-store``) or ``x-guarita-cache: bypass`` skips the
  lookup (``x-guarita-cache: bypass``); the fresh answer is stored.
* In economy mode, TTLs are ``limits.economy.cache_ttl_factor`` times longer.

CPU per call (``bench/README.md``): the key is a SHA-256 of the request's canonical JSON.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from guarita.cache.exact import (
    Entries,
    Entry,
    LocalEntries,
    SharedEntries,
    namespace_key,
    request_key,
)
from guarita.pipeline import Next
from guarita.providers.common import chunk, completion_body, completion_id
from guarita.settings import ResponseCachePolicy
from guarita.telemetry.prices import FREE, Price
from guarita.types import Call, Chunk, Completion, FallbackLevel, Reply, Usage

if TYPE_CHECKING:  # numpy and the embedder only with the semantic extra
    from guarita.cache.semantic import Probe, SemanticTier

log = structlog.get_logger("guarita.cache")

HIT, SEMANTIC_HIT, MISS, BYPASS = "hit", "semantic-hit", "miss", "bypass"
STORED_LEVELS = frozenset({FallbackLevel.PRIMARY, FallbackLevel.DEPLOYMENT})
NOT_STORED_REASONS = frozenset({None, "content_filter"})
REPLAY_CHUNK_CHARS = 64
"""A replayed stream sends the text in pieces of about this many characters."""


def bypass_requested(cache_control: str | None, guarita_cache: str | None) -> bool:
    """Whether a request's headers ask to skip the cache's lookup."""
    if guarita_cache is not None and guarita_cache.strip().lower() == BYPASS:
        return True
    if cache_control is None:
        return False
    directives = {d.strip().split("=", 1)[0].lower() for d in cache_control.split(",")}
    return bool(directives & {"no-cache", "no-store"})


class ResponseCache:
    """The pipeline stage (see the module docstring)."""

    def __init__(
        self,
        *,
        models: Mapping[str, ResponseCachePolicy],
        agents: Mapping[str, ResponseCachePolicy],
        entries: Entries,
        prices: Mapping[str, Price],
        stale_s: float,
        max_entry_bytes: int,
        economy_ttl_factor: float = 1.0,
        semantic: SemanticTier | None = None,
        on_lookup: Callable[[str], None] | None = None,
        on_saved: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._models = {name: p for name, p in models.items() if p.mode != "off"}
        self._agents = {name: p for name, p in agents.items() if p.mode != "off"}
        self.entries = entries
        self._prices = prices
        self._stale_s = stale_s
        self._max_entry_bytes = max_entry_bytes
        self._economy_ttl_factor = economy_ttl_factor
        self._on_lookup = on_lookup
        self._on_saved = on_saved
        self._clock = clock
        self.semantic = semantic
        self.lookups = {HIT: 0, SEMANTIC_HIT: 0, MISS: 0, BYPASS: 0}
        """This process's lookups by result."""
        self.saved_usd = 0.0
        """What this process's hits saved."""

    @property
    def enabled(self) -> bool:
        return bool(self._models or self._agents)

    def policy_for(self, call: Call) -> ResponseCachePolicy | None:
        """The call's cache policy, if it may be cached at all."""
        if call.operation != "chat":
            return None
        return self.chat_policy(call.model, call.agent, call.body)

    def chat_policy(
        self, model: str, agent: str | None, body: Mapping[str, Any]
    ) -> ResponseCachePolicy | None:
        """The policy of a chat request to ``model`` or ``agent``, if it may be cached (the
        HTTP layer asks before it builds the call, ``api/cached_chat.py``)."""
        policy = self._agents.get(agent) if agent is not None else self._models.get(model)
        if policy is None:
            return None
        if body.get("n") not in (None, 1):
            return None  # several choices: not what one entry holds
        if policy.max_temperature is not None:
            temperature = body.get("temperature")
            if (1.0 if temperature is None else temperature) > policy.max_temperature:
                return None
        return policy

    @staticmethod
    def _namespace(call: Call, policy: ResponseCachePolicy) -> str:
        """The storage prefix of the call's namespace."""
        if policy.namespace == "agent" and call.agent is not None:
            return namespace_key(f"agent:{call.agent}")
        return namespace_key(f"key:{call.caller.key_id or 'anonymous'}")

    @staticmethod
    def _target(call: Call) -> str:
        return f"agent:{call.agent}/{call.model}" if call.agent else f"model:{call.model}"

    def key_for(self, call: Call, policy: ResponseCachePolicy) -> str:
        """The storage key: the namespace's prefix and the request's hash."""
        return self._namespace(call, policy) + request_key(self._target(call), call.body)

    async def _probe(self, call: Call, policy: ResponseCachePolicy) -> Probe | None:
        """The semantic tier's view of the call, if its policy is semantic."""
        if policy.mode != "semantic" or self.semantic is None:
            return None
        return await self.semantic.probe(self._namespace(call, policy), self._target(call),
                                         call.body)  # fmt: skip

    async def __call__(self, call: Call, next: Next) -> Reply:
        policy = self.policy_for(call)
        if policy is None:
            return await next(call)
        key = self.key_for(call, policy)
        probe: Probe | None = None
        if call.cache_bypass:
            outcome = BYPASS
            probe = await self._probe(call, policy)
        else:
            entry = await self._lookup(key)
            if entry is not None and entry.fresh(self._clock()):
                return self._hit(call, entry, HIT)
            outcome = MISS
            probe = await self._probe(call, policy)
            if probe is not None:
                assert self.semantic is not None
                found = await self.semantic.find(probe, self._lookup)
                if found is not None:
                    call.record.cache_similarity = round(found.candidate.score, 4)
                    return self._hit(call, found.entry, SEMANTIC_HIT)
        self._seen(call, outcome)
        reply = await next(call)
        ttl = policy.ttl_s * (self._economy_ttl_factor if call.economy else 1.0)
        parts: list[str] | None = None
        if reply.source is not None and call.redactor is not None:
            # the stages above change what the caller sees (values restored into the
            # text): the entry keeps the text as it is here
            parts = []
            reply.source = _collected(reply.source, parts)

        async def store(done: Reply, error: BaseException | None) -> None:
            if error is None:
                text = None if parts is None else "".join(parts)
                await self._store(call, done, key, ttl, probe, text=text)

        await reply.after(store)
        return reply

    async def _lookup(self, key: str) -> Entry | None:
        try:
            raw = await self.entries.get(key)
        except Exception as exc:  # noqa: BLE001 - a cache that is away is a miss
            log.warning("cache_lookup_failed", error_type=type(exc).__name__)
            return None
        return None if raw is None else Entry.decode(raw)

    @property
    def hit_ratio(self) -> float | None:
        """This process's hits over hits and misses; None before any."""
        hits = self.lookups[HIT] + self.lookups[SEMANTIC_HIT]
        misses = self.lookups[MISS]
        return hits / (hits + misses) if hits + misses else None

    @property
    def local_entries(self) -> int | None:
        """Entries held in this process (None when they live in Redis)."""
        return len(self.entries) if isinstance(self.entries, LocalEntries) else None

    async def stats(self) -> dict[str, Any]:
        """What ``GET /admin/cache`` reports: the entries (every process's, when they live
        in Redis) and this process's lookups."""
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "store": "redis" if isinstance(self.entries, SharedEntries) else "process",
            "entries": await self.entries.size(),
            "lookups": dict(self.lookups),
            "hit_ratio": self.hit_ratio,
            "saved_usd": round(self.saved_usd, 6),
        }
        if self.semantic is not None:
            embedder, judge = self.semantic.embedder, self.semantic.judge
            out["semantic"] = {
                "embedder": embedder.name,
                "judge": judge.name if judge else "rules",
                "threshold": judge.threshold if judge else self.semantic.threshold,
                "indexed": len(self.semantic.index),
                "rejected": dict(self.semantic.rejected),
                "embeddings_cached": len(embedder),
                "embedding_cache": {"hits": embedder.hits, "misses": embedder.misses},
            }
        return out

    async def clear(self, namespace: str | None = None) -> int:
        """Drop the entries of one namespace (``key:<key id>`` or ``agent:<name>``), or all;
        how many there were."""
        prefix = None if namespace is None else namespace_key(namespace)
        if self.semantic is not None:
            await self.semantic.clear(prefix)
        return await self.entries.clear(prefix)

    def _seen(self, call: Call, outcome: str) -> None:
        call.record.cache = outcome
        call.response_headers["x-guarita-cache"] = outcome
        self.lookups[outcome] = self.lookups.get(outcome, 0) + 1
        if self._on_lookup is not None:
            self._on_lookup(outcome)

    def _hit(self, call: Call, entry: Entry, how: str) -> Reply:
        self._seen(call, how)
        saved = self._prices.get(entry.model, FREE).cost(entry.usage)
        call.record.cache_saved_usd = saved
        self.saved_usd += saved
        if self._on_saved is not None and saved:
            self._on_saved(saved)
        return self._answer(call, entry, how)

    async def fallback_answer(self, call: Call) -> Reply | None:
        """For the ``cache`` fallback level, when every model failed: the cached answer to
        this request, fresh or stale (kept ``stale_s`` past its TTL), or, with a semantic
        policy, to a verified similar one; or None."""
        policy = self.policy_for(call)
        if policy is None:
            return None
        entry = await self._lookup(self.key_for(call, policy))
        if entry is None:
            probe = await self._probe(call, policy)
            if probe is not None:
                assert self.semantic is not None
                found = await self.semantic.find(probe, self._lookup, stale_ok=True)
                entry = None if found is None else found.entry
        return None if entry is None else self._answer(call, entry, "fallback")

    def _answer(self, call: Call, entry: Entry, how: str) -> Reply:
        """The reply an entry gives: its body with a new id, streamed if asked."""
        body = dict(entry.body)
        body["id"] = completion_id()
        body["created"] = int(self._clock())
        model = str(body.get("model") or call.model)
        if call.stream:
            reply = Reply(model=model, provider="cache", source=_replay(body, entry.usage))
        else:
            reply = Reply.complete("cache", Completion(body=body, usage=entry.usage, model=model))
        reply.served_by = entry.model
        reply.cache = how
        return reply

    async def _store(
        self, call: Call, reply: Reply, key: str, ttl_s: float, probe: Probe | None = None,
        *, text: str | None = None,
    ) -> None:  # fmt: skip
        if reply.cache is not None or reply.fallback_level not in STORED_LEVELS:
            return
        if reply.finish_reason in NOT_STORED_REASONS:
            return  # cut off, or filtered: never an answer to serve again
        if reply.completion is not None:
            body = reply.completion.body
        elif reply.finish_reason == "tool_calls":
            return  # a streamed tool call: its arguments are not what the stream kept
        else:
            body = completion_body(
                cid=completion_id(), model=reply.model,
                text=reply.text if text is None else text,
                finish_reason=reply.finish_reason, usage=reply.usage,
            )  # fmt: skip
        now = self._clock()
        entry = Entry(body=body, usage=reply.usage, model=reply.served_by or call.model,
                      stored_at=now, fresh_until=now + ttl_s)  # fmt: skip
        raw = entry.encode()
        if len(raw) > self._max_entry_bytes:
            return
        try:
            await self.entries.put(key, raw, ttl_s + self._stale_s)
        except Exception as exc:  # noqa: BLE001 - an answer not cached is still an answer
            log.warning("cache_store_failed", error_type=type(exc).__name__)
            return
        if probe is not None:
            assert self.semantic is not None
            await self.semantic.add(probe, key, entry.fresh_until, now + ttl_s + self._stale_s)


async def _collected(source: AsyncIterator[Chunk], parts: list[str]) -> AsyncIterator[Chunk]:
    """``source`` passed on, the text of its first choice kept in ``parts``."""
    try:
        async for chunk in source:
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content and choice.get("index", 0) == 0:
                    parts.append(content)
            yield chunk
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


async def _replay(body: dict[str, Any], usage: Usage) -> AsyncIterator[Chunk]:
    """A cached ``chat.completion`` as the chunks of a stream: the role, the text in
    pieces, any tool calls, the finish reason, then the usage chunk."""
    cid, model = str(body["id"]), str(body.get("model") or "")
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    yield chunk(cid=cid, model=model, role="assistant", content="")
    text = message.get("content") or ""
    for start in range(0, len(text), REPLAY_CHUNK_CHARS):
        yield chunk(cid=cid, model=model, content=text[start : start + REPLAY_CHUNK_CHARS])
    tool_calls = message.get("tool_calls")
    if tool_calls:
        piece = chunk(cid=cid, model=model)
        piece["choices"][0]["delta"]["tool_calls"] = [
            {**call, "index": i} for i, call in enumerate(tool_calls)
        ]
        yield piece
    yield chunk(cid=cid, model=model, finish_reason=choice.get("finish_reason") or "stop")
    yield chunk(cid=cid, model=model, usage=usage)
