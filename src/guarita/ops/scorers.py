"""Quality scorers: how good an answer is, from 0 (useless) to 1 (perfect).

Scorers are named in ``Settings.quality.scorers`` and chosen per agent
(``AgentSettings.quality``); :class:`Scoring` (``runtime.scoring``) combines an agent's
scorers into one score, the weighted mean of those that could score. Three kinds:

* :class:`HeuristicScorer`: fast and synchronous, from the answer alone (penalties below).
* :class:`SimilarityScorer`: cosine of the answer and a reference answer on the cache's
  WordLlama embedder; no reference, no score.
* :class:`RelevanceScorer`: cosine of the last user message and the answer on the same
  embedder, scaled so an on-topic answer scores 1: it catches an off-topic answer, which
  the heuristic does not see (rollouts score their samples with it, off the live path).
* :class:`JudgeScorer`: a configured model rates the answer against a rubric, called
  through the runtime's pipeline as an internal call (``endpoint="quality.judge"``, a caller
  with no key and no tier, so no key's limits or budget pays for it).

Live answers (:class:`ScoringStage`) are scored by the synchronous scorers only, so that
no answer waits for an embedding or a judge; :meth:`Scoring.score` runs them all, for
rollouts, shadow comparisons and consistency.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog

from guarita.errors import GuaritaError
from guarita.pipeline import Next
from guarita.providers.common import message_text
from guarita.resilience.quality import REFUSAL, Scorer, wants_json
from guarita.settings import Settings
from guarita.settings_quality import ScorerSettings
from guarita.types import Call, Caller, Reply

if TYPE_CHECKING:
    from guarita.cache.embedder import WordLlamaEmbedder

log = structlog.get_logger("guarita.quality")

INTERNAL_CALLER = Caller(key_id=None, name="guarita-quality", tier="internal", auth="none")
"""Who the judge's calls are made as: no key and no configured tier, so rate limits and
budgets (which count per key and tier) leave them out."""

PENALTIES = {
    "refusal": 0.6,
    "echo": 0.6,
    "truncated": 0.3,
    "invalid_json": 0.7,
}
"""What the heuristic scorer takes off 1.0 for each finding (an empty answer scores 0)."""

ECHO_SHARE = 0.5
"""An answer at least this much made of the prompt's own text (or this similar to the last
user message, near-verbatim) is an echo."""


@dataclass(frozen=True, slots=True)
class ScoreInput:
    messages: list[dict[str, Any]]
    """What was sent."""
    answer: str
    finish_reason: str | None = None
    wants_json: bool = False
    reference: str | None = None
    """A reference answer (the similarity scorer)."""


class QualityScorer(Protocol):
    name: str
    live: bool
    """Cheap enough to score every live answer synchronously (``score_now``)."""

    async def score(self, item: ScoreInput) -> float | None:
        """0..1; None when this scorer cannot score the item."""
        ...


def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def is_echo(answer: str, messages: list[dict[str, Any]]) -> bool:
    """The answer mostly repeats the prompt: the last user message near-verbatim, or the
    prompt's messages making up at least ``ECHO_SHARE`` of the answer."""
    said = _normal(answer)
    if not said:
        return False
    texts = [_normal(message_text(m)) for m in messages if m.get("role") != "assistant"]
    texts = [t for t in texts if len(t) >= 8]
    users = [_normal(message_text(m)) for m in messages if m.get("role") == "user"]
    if users and users[-1] and SequenceMatcher(None, said, users[-1]).ratio() >= 0.9:
        return True
    covered = sum(said.count(t) * len(t) for t in texts)
    return covered >= ECHO_SHARE * len(said)


def heuristic_findings(item: ScoreInput) -> list[str]:
    """What is wrong with an answer, as ``PENALTIES`` keys (``empty`` alone when empty)."""
    if not item.answer.strip():
        return ["empty"]
    found = []
    if REFUSAL.match(item.answer):
        found.append("refusal")
    if is_echo(item.answer, item.messages):
        found.append("echo")
    if item.finish_reason == "length":
        found.append("truncated")
    if item.wants_json:
        try:
            orjson.loads(item.answer)
        except orjson.JSONDecodeError:
            found.append("invalid_json")
    return found


class HeuristicScorer:
    """1.0 less ``PENALTIES`` for each finding, at least 0; an empty answer is 0."""

    live = True

    def __init__(self, name: str = "heuristic") -> None:
        self.name = name

    def score_now(self, item: ScoreInput) -> float:
        found = heuristic_findings(item)
        if found == ["empty"]:
            return 0.0
        return round(max(0.0, 1.0 - sum(PENALTIES[f] for f in found)), 4)

    async def score(self, item: ScoreInput) -> float | None:
        return self.score_now(item)


class Similarity:
    """Cosine similarity of two texts on WordLlama (the semantic cache's embedder), loaded
    once per process on first use, off the event loop."""

    def __init__(self) -> None:
        self._embedder: WordLlamaEmbedder | None = None
        self._loading = asyncio.Lock()

    async def _ready(self) -> WordLlamaEmbedder:
        async with self._loading:
            if self._embedder is None:
                from guarita.cache.embedder import WordLlamaEmbedder

                self._embedder = await asyncio.to_thread(WordLlamaEmbedder)
        return self._embedder

    async def embedder(self) -> WordLlamaEmbedder:
        """The embedder itself, shared with drift sampling (one model in memory)."""
        return await self._ready()

    async def __call__(self, a: str, b: str) -> float:
        if not a.strip() or not b.strip():
            return 1.0 if a.strip() == b.strip() else 0.0
        embedder = await self._ready()
        vectors = await embedder.embed([a, b])
        return round(float(min(1.0, max(-1.0, vectors[0] @ vectors[1]))), 6)

    async def aclose(self) -> None:
        if self._embedder is not None:
            await self._embedder.aclose()


class SimilarityScorer:
    """The answer's cosine to the reference answer, negative cosines as 0."""

    live = False

    def __init__(self, name: str, similarity: Callable[[str, str], Awaitable[float]]) -> None:
        self.name = name
        self._similarity = similarity

    async def score(self, item: ScoreInput) -> float | None:
        if item.reference is None:
            return None
        return max(0.0, await self._similarity(item.answer, item.reference))


def last_user_text(messages: list[dict[str, Any]]) -> str:
    users = [message_text(m) for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


class RelevanceScorer:
    """How much the answer is about the question: their cosine divided by ``full_at`` (the
    cosine of an on-topic answer), within 0..1; no question, no score."""

    live = False

    def __init__(
        self, name: str, similarity: Callable[[str, str], Awaitable[float]], *, full_at: float
    ) -> None:
        self.name = name
        self._similarity = similarity
        self._full_at = full_at

    async def score(self, item: ScoreInput) -> float | None:
        question = last_user_text(item.messages)
        if not question.strip():
            return None
        cosine = await self._similarity(question, item.answer)
        return round(min(1.0, max(0.0, cosine) / self._full_at), 4)


_RATING = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:(?:/|out of)\s*(\d+))?", re.IGNORECASE)


def parse_rating(text: str) -> float | None:
    """The first rating in a judge's answer as 0..1: ``8``, ``8/10``, ``8 out of 10`` and
    ``0.8`` all give 0.8 (integers are on the rubric's 0-10 scale, decimals up to 1 on
    0-1); None when there is none or it is off the scale."""
    match = _RATING.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    if match.group(2):
        scale = float(match.group(2))
        return round(value / scale, 4) if scale > 0 and value <= scale else None
    if "." in match.group(1) and value <= 1.0:
        return value
    return round(value / 10, 4) if value <= 10 else None


class JudgeScorer:
    """A model rates the answer with a rubric: a number from 0 to 10 (or 0 to 1)."""

    live = False

    def __init__(self, name: str, settings: ScorerSettings, pipeline: Callable[[], Next]) -> None:
        assert settings.model is not None
        self.name = name
        self.model = settings.model
        self._rubric = settings.rubric
        self._max_tokens = settings.max_tokens
        self._pipeline = pipeline

    def judge_call(self, item: ScoreInput) -> Call:
        question = last_user_text(item.messages)
        return Call(
            request_id=f"judge-{uuid.uuid4().hex}",
            model=self.model,
            body={
                "messages": [
                    {"role": "system", "content": self._rubric},
                    {
                        "role": "user",
                        "content": f"Question:\n{question}\n\nAnswer:\n{item.answer}\n\n"
                        "Score (0-10):",
                    },
                ],
                "temperature": 0.0,
                "max_tokens": self._max_tokens,
            },
            caller=INTERNAL_CALLER,
            endpoint="quality.judge",
        )

    async def score(self, item: ScoreInput) -> float | None:
        try:
            reply: Reply = await self._pipeline()(self.judge_call(item))
        except GuaritaError as exc:
            log.warning("judge_failed", scorer=self.name, model=self.model, error=exc.error_type)
            return None
        rating = parse_rating(reply.text)
        if rating is None:
            log.info("judge_unparsed", scorer=self.name, model=self.model)
        return rating


def combine(
    scores: Mapping[str, float | None], weights: Mapping[str, float] | None
) -> float | None:
    """The weighted mean of the scores that are not None (equal weights by default)."""
    total = weight_sum = 0.0
    for name, value in scores.items():
        if value is None:
            continue
        weight = 1.0 if weights is None else weights.get(name, 1.0)
        total += weight * value
        weight_sum += weight
    return round(total / weight_sum, 4) if weight_sum > 0 else None


class Scoring:
    """The scorers of ``Settings.quality`` and each agent's choice of them."""

    def __init__(self, settings: Settings) -> None:
        self.similarity = Similarity()
        self.relevance = RelevanceScorer(
            "relevance", self.similarity, full_at=settings.rollouts.relevance_full_at
        )
        """The rollouts' off-topic signal, whichever scorers an agent names."""
        self._pipeline: Next | None = None
        self._scorers: dict[str, QualityScorer] = {
            name: self._build(name, s) for name, s in settings.quality.scorers.items()
        }
        self._agents = {
            name: agent.quality for name, agent in settings.agents.items() if agent.quality
        }

    def _build(self, name: str, settings: ScorerSettings) -> QualityScorer:
        if settings.kind == "heuristic":
            return HeuristicScorer(name)
        if settings.kind == "similarity":
            return SimilarityScorer(name, self.similarity)
        if settings.kind == "relevance":
            return RelevanceScorer(name, self.similarity, full_at=settings.full_at)
        return JudgeScorer(name, settings, self._bound_pipeline)

    def bind(self, pipeline: Next) -> None:
        """The pipeline judges call (built after the scoring stage that sits in it)."""
        self._pipeline = pipeline

    def _bound_pipeline(self) -> Next:
        if self._pipeline is None:
            raise RuntimeError("Scoring.bind(pipeline) was not called")
        return self._pipeline

    def enabled(self, agent: str | None) -> bool:
        return agent is not None and agent in self._agents

    def _chosen(self, agent: str | None) -> list[QualityScorer]:
        quality = self._agents.get(agent or "")
        return [self._scorers[n] for n in quality.scorers] if quality else []

    def _weights(self, agent: str | None) -> Mapping[str, float] | None:
        quality = self._agents.get(agent or "")
        return quality.weights if quality else None

    async def score(
        self, agent: str | None, item: ScoreInput
    ) -> tuple[float | None, dict[str, float]]:
        """(combined, per scorer) with every scorer the agent names."""
        chosen = self._chosen(agent)
        values = await asyncio.gather(*(s.score(item) for s in chosen))
        per = {s.name: v for s, v in zip(chosen, values, strict=True) if v is not None}
        return combine(per, self._weights(agent)), per

    def score_now(
        self, agent: str | None, item: ScoreInput
    ) -> tuple[float | None, dict[str, float]]:
        """(combined, per scorer) with the agent's synchronous scorers only."""
        per = {
            s.name: s.score_now(item) for s in self._chosen(agent) if isinstance(s, HeuristicScorer)
        }
        return combine(per, self._weights(agent)), dict(per)

    def resilience_scorer(self) -> Scorer:
        """The heuristic as ``quality.min_score``'s scorer: synchronous and fast, run on each
        deployment's answer inside the model group."""
        heuristic = HeuristicScorer()

        def score(call: Call, text: str) -> float:
            return heuristic.score_now(
                ScoreInput(messages=call.messages, answer=text, wants_json=wants_json(call))
            )

        return score

    async def aclose(self) -> None:
        await self.similarity.aclose()


def note_scores(call: Call, reply: Reply, combined: float | None, per: dict[str, float]) -> None:
    """Put scores on the reply and the call's record: the combined score caps the reply's
    quality (a fallback level's own quality stays the ceiling)."""
    if combined is not None:
        reply.quality = min(reply.quality, combined)
    if hasattr(call.record, "scores"):
        call.record.scores = per


class ScoringStage:
    """Scores an agent's answers with its synchronous scorers before Recording writes the
    record (for a stream: when it ends); agents without ``quality`` pass through."""

    def __init__(self, scoring: Scoring) -> None:
        self._scoring = scoring

    async def __call__(self, call: Call, next: Next) -> Reply:
        reply = await next(call)
        agent = call.agent
        if not self._scoring.enabled(agent) or call.operation != "chat":
            return reply

        def score(finished: Reply, error: BaseException | None) -> None:
            if error is not None:
                return
            item = ScoreInput(
                messages=call.messages,
                answer=finished.text,
                finish_reason=finished.finish_reason,
                wants_json=wants_json(call),
            )
            combined, per = self._scoring.score_now(agent, item)
            note_scores(call, finished, combined, per)

        reply.on_finish(score)
        return reply
