"""The semantic tier: an earlier answer to a *verified* similar question (docs/cache.md).

After an exact miss, a cacheable request is split in two: its **question** (the last user
message, as text) and its **context** (everything else: the model or agent, the system
prompt, earlier turns, tools, sampling parameters). Entries are grouped by namespace and
context, so only questions asked in the same namespace and the same context are compared.
The question is embedded (the embedding cache keeps each text's vector), its nearest
neighbours are found in the group (:mod:`guarita.cache.index`), and a neighbour is served
only if its answer is still in the exact tier (the index keeps the answer's key, not the
answer) and it passes one of two decisions:

* the **judge** (``judge: model``, the default with WordLlama): the neighbours above the
  judge's retrieval floor are read, with the question, by a learned model
  (:mod:`guarita.cache.judge`: all-MiniLM-L6-v2 token alignments, the verifier's checks and
  boosted trees), whose threshold is calibrated for at most 1 % of trap pairs served
  (``bench/semantic_judge.py``);
* the **rules** (``judge: rules``, the only choice with an endpoint embedder): the cosine
  is at least the threshold calibrated for the embedder (:data:`WORDLLAMA_THRESHOLD`,
  ``bench/semantic_calibration.py``) and the verifier finds no difference of negation,
  number, date, entity, scope, roles or substituted words
  (:func:`guarita.cache.verify.verify`).

In scale-out mode each indexed question is also a value of the shared state (with the
answer's TTL) and a message on a channel: every API process adds what another indexed
as it is published, and loads what was indexed before it started.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import structlog

from guarita.cache.embedder import CachedEmbedder
from guarita.cache.exact import Entry, request_key
from guarita.cache.index import Candidate, SemanticEntry, VectorIndex
from guarita.cache.verify import verify
from guarita.state import SharedState
from guarita.state.listener import Listener

if TYPE_CHECKING:
    from guarita.cache.judge import PairJudge

log = structlog.get_logger("guarita.cache")

WORDLLAMA_THRESHOLD = 0.975
"""The cosine threshold for ``wordllama-l2_supercat-256``, calibrated for at most 1 % of
trap pairs served (upper 95 % Wilson bound, after verification) on the calibration split
of ``tests/cache/data``; ``bench/semantic_calibration.py`` computes it and
``tests/cache/test_semantic.py`` checks it is still what the pairs give."""

CHANNEL = "cache.semantic"
VALUE_PREFIX = "sem:"


def question_of(body: Mapping[str, Any]) -> str | None:
    """The last message's text if it is the user's (text parts joined), else None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content.strip() or None
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None  # an image or a file: not a question to compare by text
            parts.append(str(part.get("text") or ""))
        return "\n".join(parts).strip() or None
    return None


def embedding_text(question: str) -> str:
    """What is embedded of a question: lower case, single spaces (WordLlama's tokens are
    case-sensitive; "How do I" and "how do i" should not differ; calibrated this way)."""
    return " ".join(question.lower().split())


def context_key(target: str, body: Mapping[str, Any]) -> str:
    """The hash of a request without its last message (the question)."""
    messages = body["messages"]
    return request_key(target, {**body, "messages": messages[:-1], "~question": True})


@dataclass(frozen=True, slots=True)
class Probe:
    """A request as the semantic tier sees it."""

    group: str
    """The namespace's storage prefix and the context's hash."""
    question: str
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class Found:
    entry: Entry
    candidate: Candidate


class SemanticTier:
    """The lookup and the index (see the module docstring)."""

    def __init__(
        self,
        *,
        embedder: CachedEmbedder,
        index: VectorIndex,
        threshold: float,
        candidates: int = 4,
        max_question_chars: int = 2000,
        state: SharedState | None = None,
        judge: PairJudge | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.embedder = embedder
        self.judge = judge
        self.index = index
        self.threshold = threshold
        self._candidates = candidates
        self._max_question_chars = max_question_chars
        self._state = state
        self._clock = clock
        self._origin = uuid.uuid4().hex[:12]
        self._listener: Listener | None = None
        self._loading: asyncio.Task[None] | None = None
        self.rejected: dict[str, int] = {}
        """Candidates rejected, by reason: the verifier's, or ``judge``."""

    async def probe(
        self, namespace_prefix: str, target: str, body: Mapping[str, Any]
    ) -> Probe | None:
        """The request's group, question and vector; None when it has no question to
        compare (the last message is not a user's text, or is too long) or the embedder
        failed (the request is then looked up exactly only)."""
        question = question_of(body)
        if question is None or len(question) > self._max_question_chars:
            return None
        try:
            vector = (await self.embedder.embed([embedding_text(question)]))[0]
        except Exception as exc:  # noqa: BLE001 - no embedding: an exact lookup only
            log.warning("semantic_embed_failed", error_type=type(exc).__name__)
            return None
        group = namespace_prefix + context_key(target, body)[:32]
        return Probe(group, question, vector)

    async def find(
        self,
        probe: Probe,
        lookup: Callable[[str], Awaitable[Entry | None]],
        *,
        stale_ok: bool = False,
    ) -> Found | None:
        """The first neighbour the judge (or the threshold and the verifier) accepts and
        whose answer is still there (fresh, unless ``stale_ok``)."""
        now = self._clock()
        floor = self.judge.retrieval_floor if self.judge is not None else self.threshold
        live: list[Candidate] = []
        for candidate in self.index.search(probe.group, probe.vector, self._candidates):
            if candidate.score < floor:
                break  # most similar first
            indexed = candidate.entry
            if now >= indexed.keep_until:
                self.index.remove(candidate.label)
            elif stale_ok or now < indexed.fresh_until:
                live.append(candidate)
        if not live:
            return None
        if self.judge is not None:
            return await self._judged(probe, live, lookup, now, stale_ok)
        for candidate in live:
            if self._verified(probe.question, candidate):
                found = await self._answer(candidate, lookup, now, stale_ok)
                if found is not None:
                    return Found(found, candidate)
        return None

    async def _judged(
        self,
        probe: Probe,
        live: list[Candidate],
        lookup: Callable[[str], Awaitable[Entry | None]],
        now: float,
        stale_ok: bool,
    ) -> Found | None:
        """The most similar candidate the judge accepts, judged in order of similarity and
        no further than the first accepted whose answer is there (each judgement of a
        question not seen lately costs an encoding)."""
        assert self.judge is not None
        while live:
            judgements = await self.judge.judge(
                probe.question, [(c.entry.text, c.score) for c in live], first=True
            )
            if judgements is None:
                self.rejected["judge_busy"] = self.rejected.get("judge_busy", 0) + 1
                return None
            refused = sum(1 for j in judgements if not j.accepted)
            self.rejected["judge"] = self.rejected.get("judge", 0) + refused
            if not judgements[-1].accepted:
                return None
            candidate, live = live[len(judgements) - 1], live[len(judgements) :]
            found = await self._answer(candidate, lookup, now, stale_ok)
            if found is not None:
                return Found(found, candidate)
        return None

    async def _answer(
        self,
        candidate: Candidate,
        lookup: Callable[[str], Awaitable[Entry | None]],
        now: float,
        stale_ok: bool,
    ) -> Entry | None:
        entry = await lookup(candidate.entry.key)
        if entry is None:
            self.index.remove(candidate.label)  # the answer was evicted or cleared
            return None
        if not stale_ok and not entry.fresh(now):
            return None
        self.index.touch(candidate.label)
        return entry

    def _verified(self, question: str, candidate: Candidate) -> bool:
        verdict = verify(question, candidate.entry.text)
        if not verdict.ok:
            self.rejected[verdict.reason] = self.rejected.get(verdict.reason, 0) + 1
        return verdict.ok

    async def add(self, probe: Probe, key: str, fresh_until: float, keep_until: float) -> None:
        """Index the answered question (and share it, in scale-out mode)."""
        entry = SemanticEntry(probe.question, key, fresh_until, keep_until)
        self.index.add(probe.group, probe.vector, entry)
        if self._state is None:
            return
        record = _encode(self._origin, probe.group, entry, probe.vector)
        try:
            await self._state.set(_value_key(probe.group, key), record,
                                  ttl_s=max(1.0, keep_until - self._clock()))  # fmt: skip
            await self._state.publish(CHANNEL, record)
        except Exception as exc:  # noqa: BLE001 - indexed here, not shared
            log.warning("semantic_share_failed", error_type=type(exc).__name__)

    async def clear(self, namespace_prefix: str | None) -> int:
        """Forget the groups of a namespace (all with None), here and in every process."""
        dropped = self.index.remove_prefix(namespace_prefix)
        if self._state is not None:
            await self._state.delete_prefix(VALUE_PREFIX + (namespace_prefix or ""))
            await self._state.publish(CHANNEL, orjson.dumps({"clear": namespace_prefix,
                                                             "o": self._origin}))  # fmt: skip
        return dropped

    # -- scale-out: what other processes index -------------------------------------------

    async def start(self) -> None:
        """Load the judge's encoder; listen for what other processes index, and load what
        they indexed before."""
        if self.judge is not None:
            await self.judge.start()
        if self._state is None:
            return
        self._listener = Listener(self._state, CHANNEL, self._on_message,
                                  on_subscribed=self._reload)  # fmt: skip
        await self._listener.start()

    def _reload(self) -> None:
        """On (re)subscribing: what was published while away is read from the values."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        assert self._state is not None
        loaded = 0
        try:
            async for _key, record in self._state.items_prefix(VALUE_PREFIX):
                if self._add_record(record, own_too=True):
                    loaded += 1
        except Exception as exc:  # noqa: BLE001 - what is published still arrives
            log.warning("semantic_load_failed", error_type=type(exc).__name__)
        log.info("semantic_index_loaded", entries=loaded)

    def _on_message(self, message: bytes) -> None:
        data = orjson.loads(message)
        if "clear" in data:
            if data.get("o") != self._origin:
                self.index.remove_prefix(data["clear"])
            return
        self._add_record(message, own_too=False)

    def _add_record(self, record: bytes, *, own_too: bool) -> bool:
        try:
            data = orjson.loads(record)
            if data["o"] == self._origin and not own_too:
                return False
            vector = np.frombuffer(base64.b64decode(data["v"]), dtype=np.float16)
            entry = SemanticEntry(str(data["t"]), str(data["k"]), float(data["f"]),
                                  float(data["u"]))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("semantic_record_bad")
            return False
        if self.index.dims and vector.shape != (self.index.dims,):
            return False
        if self._clock() >= entry.keep_until:
            return False
        self.index.add(str(data["g"]), vector.astype(np.float32), entry)
        return True

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()
        if self._loading is not None:
            self._loading.cancel()
        if self.judge is not None:
            await self.judge.aclose()
        await self.embedder.aclose()


def _value_key(group: str, key: str) -> str:
    return VALUE_PREFIX + group + ":" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _encode(origin: str, group: str, entry: SemanticEntry, vector: np.ndarray) -> bytes:
    return orjson.dumps({
        "o": origin, "g": group, "t": entry.text, "k": entry.key, "f": entry.fresh_until,
        "u": entry.keep_until, "v": base64.b64encode(vector.astype(np.float16).tobytes()).decode(),
    })  # fmt: skip
