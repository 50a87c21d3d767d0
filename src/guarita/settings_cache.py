"""Settings of the response cache's storage and its semantic tier (docs/cache.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from guarita.settings_base import Strict as _Strict


class EmbeddingEndpoint(_Strict):
    """An OpenAI-compatible ``/v1/embeddings`` endpoint for the semantic tier."""

    base_url: str = Field(description="e.g. https://api.openai.com/v1")
    model: str
    api_key_env: str | None = Field(
        default=None, description="The variable holding its key (none: no Authorization)."
    )


class SemanticCacheSettings(_Strict):
    """The semantic tier: the embedder, the threshold and the in-process vector index."""

    embedder: Literal["wordllama"] | EmbeddingEndpoint = Field(
        default="wordllama",
        description="wordllama: the local model in the `semantic` extra; or an endpoint.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Cosine from which a verified candidate is served; none: the threshold "
        "calibrated for wordllama (required with an endpoint: `guarita cache calibrate`).",
    )
    judge: Literal["model", "rules"] | None = Field(
        default=None,
        description="model: the learned judge (all-MiniLM-L6-v2 and boosted trees, with "
        "wordllama only); rules: the cosine threshold and the rule verifier; none: model "
        "with wordllama, rules with an endpoint.",
    )
    judge_threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="The judge's probability from which a candidate is served; none: the "
        "one shipped with it, calibrated for at most 1 % of trap pairs served.",
    )
    candidates: int = Field(default=4, ge=1, le=32, description="Neighbours verified per lookup.")
    max_entries: int = Field(default=100_000, gt=0, description="Indexed questions (LRU).")
    max_question_chars: int = Field(
        default=2000, gt=0, description="A longer last user message is looked up exactly only."
    )
    embedding_cache_entries: int = Field(
        default=50_000, ge=0, description="Embeddings kept in process, by text (LRU)."
    )

    @model_validator(mode="after")
    def _judge_needs_wordllama(self) -> SemanticCacheSettings:
        if self.judge == "model" and self.embedder != "wordllama":
            raise ValueError("judge: model reads WordLlama's vectors; with an endpoint "
                             "embedder use judge: rules and a calibrated threshold")  # fmt: skip
        return self

    @property
    def judge_mode(self) -> Literal["model", "rules"]:
        if self.judge is not None:
            return self.judge
        return "model" if self.embedder == "wordllama" else "rules"


class CacheSettings(_Strict):
    """The response cache's storage: in process (embedded) or in Redis (with redis_url)."""

    max_entries: int = Field(default=10_000, gt=0, description="In-process entries (LRU).")
    max_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="In-process entries' total size (LRU)."
    )
    max_entry_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Larger answers are not cached."
    )
    stale_s: float = Field(
        default=86400.0,
        ge=0,
        description="How long an answer is kept after its TTL, to answer at the `cache` "
        "fallback level when every model fails.",
    )
    semantic: SemanticCacheSettings = SemanticCacheSettings()
