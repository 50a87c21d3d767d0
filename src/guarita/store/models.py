"""Tables. Changes here need an Alembic revision in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

REQUEST_ID_MAX = 128
"""The longest ``X-Request-ID`` accepted from a caller, and the columns that hold it."""


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(50), default="free")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    limits: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """The key's own limits over its tier's (``TierLimits`` fields it sets)."""
    updated_at: Mapped[datetime | None] = mapped_column(default=None)
    roles: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    """The key's roles (admin, operator, viewer, user); None: those its tier maps to."""
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    """After this the key is refused, as a revoked one is."""


class RequestRow(Base):
    """One answered (or failed) model call: the source of truth for usage and cost. Written
    from a :class:`guarita.types.RequestRecord`, whose fields document the columns."""

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("record_id", name="uq_requests_record_id"),
        Index("ix_requests_agent_created_at", "agent", "created_at"),  # SLO counts (0013)
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    record_id: Mapped[str | None] = mapped_column(String(32), default=None)
    """Unique per record, so that writing a record twice stores it once."""
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_MAX), index=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), index=True)
    endpoint: Mapped[str] = mapped_column(String(40))
    agent: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(50))
    upstream_model: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(60))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float)
    session_id: Mapped[str | None] = mapped_column(String(64))
    served_by: Mapped[str | None] = mapped_column(String(200), default=None)
    deployment: Mapped[str | None] = mapped_column(String(200), default=None)
    fallback_level: Mapped[str | None] = mapped_column(String(20), default=None)
    tokens_saved: Mapped[int] = mapped_column(Integer, default=0)
    """Prompt tokens (estimated) that prompt compression removed before the call."""
    requested_model: Mapped[str | None] = mapped_column(String(200), default=None)
    quality: Mapped[float | None] = mapped_column(Float, default=None)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    route: Mapped[str | None] = mapped_column(String(20), default=None)
    complexity: Mapped[float | None] = mapped_column(Float, default=None)
    economy: Mapped[str | None] = mapped_column(String(200), default=None)
    cache: Mapped[str | None] = mapped_column(String(20), default=None)
    cache_saved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    guard: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """What the guards found: kinds and counts, verdicts and scores (never a value)."""
    prompt_name: Mapped[str | None] = mapped_column(String(200), default=None)
    prompt_version: Mapped[int | None] = mapped_column(Integer, default=None)
    prompt_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    variant: Mapped[str | None] = mapped_column(String(20), default=None)
    rollout_id: Mapped[str | None] = mapped_column(String(64), default=None)
    scores: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    consistency: Mapped[float | None] = mapped_column(Float, default=None)
    answer_chars: Mapped[int | None] = mapped_column(Integer, default=None)
    refusal: Mapped[bool | None] = mapped_column(Boolean, default=None)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)
    """exp(mean token logprob) of the answer, when the provider returned logprobs."""


class RequestStepRow(Base):
    """One step of a chat call (reasoning, a tool call, a tool result), PII-masked and cut
    to ``steps.max_chars``; kept for ``steps.retention_days`` (docs/observability.md)."""

    __tablename__ = "request_steps"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    step_id: Mapped[str] = mapped_column(String(48), unique=True)
    """``<record_id>-<index>``: writing a step twice stores it once."""
    record_id: Mapped[str] = mapped_column(String(32), index=True)
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_MAX), index=True)
    step_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    """The tool's name (tool calls and results), or None."""
    call_id: Mapped[str | None] = mapped_column(String(100), default=None)
    content: Mapped[str] = mapped_column(Text)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(index=True)


class ChatSession(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ChatMessage(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_session_seq", "session_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    agent: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    key_id: Mapped[str | None] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX))
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    """Claims, ended or not; ``attempts`` counts only attempts that ended."""
    kind: Mapped[str] = mapped_column(String(20), default="agent", server_default="agent")
    """What runs it: ``agent`` (an agent chat) or ``batch`` (a Batch API batch)."""
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class StoredFile(Base):
    """A file of the Batch API (``/v1/files``): an uploaded batch input, or the output or
    error file of a batch. Its bytes live in the store, where every process can read them."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_key_created", "key_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column("bytes", BigInteger)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    """Requests in a batch input file (its non-blank lines)."""
    created_at: Mapped[datetime]
    content: Mapped[bytes] = mapped_column(LargeBinary)


class BatchJob(Base):
    """A batch: the lines of its input file run through the pipeline as its key's calls."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_key_created", "key_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(40))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    output_file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    error_file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    errors: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), default=None)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    in_progress_at: Mapped[datetime | None] = mapped_column(default=None)
    finalizing_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    failed_at: Mapped[datetime | None] = mapped_column(default=None)
    expired_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelling_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)


class BatchResult(Base):
    """One line's outcome, stored as it completes: at most one per line, whatever runs the
    batch again after a crash (the primary key)."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    """The line's index among the requests of the input file, from 0."""
    id: Mapped[str] = mapped_column(String(64))
    custom_id: Mapped[str] = mapped_column(Text)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), default=None)
    body: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime]


class AuditEntry(Base):
    """One entry of the audit log: access, data access or a change. Append-only; each row's
    ``hash`` covers its fields and the previous row's hash, so an edited or deleted row
    breaks the chain (``guarita audit verify``)."""

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("entry_id", name="uq_audit_log_entry_id"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    entry_id: Mapped[str] = mapped_column(String(32))
    """Unique per entry, so that writing an entry twice (from the spool) stores it once."""
    created_at: Mapped[datetime] = mapped_column(index=True)
    category: Mapped[str] = mapped_column(String(20))
    """``access``, ``data`` or ``change``."""
    action: Mapped[str] = mapped_column(String(60), index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    target: Mapped[str | None] = mapped_column(String(500), default=None)
    outcome: Mapped[str] = mapped_column(String(20))
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), default=None)
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    details: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's last link (one row, ``id`` 1): writers lock it to append in order."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class Prompt(Base):
    """A named prompt of the registry; its content lives in its versions."""

    __tablename__ = "prompts"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime]


class PromptVersionRow(Base):
    """One immutable version of a prompt: written once, never updated."""

    __tablename__ = "prompt_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_prompt_versions_name_version"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    name: Mapped[str] = mapped_column(ForeignKey("prompts.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    template: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    variables: Mapped[list[str]] = mapped_column(JSON)
    model_config_: Mapped[dict[str, Any]] = mapped_column("model_config", JSON)
    author: Mapped[str | None] = mapped_column(String(200), default=None)
    tags: Mapped[list[str]] = mapped_column(JSON)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class PromptLabel(Base):
    """A label (``production``, ``staging``, ...) pointing at a version; ``revision`` grows
    by one at each move, which a move compares and swaps."""

    __tablename__ = "prompt_labels"

    name: Mapped[str] = mapped_column(
        ForeignKey("prompts.name", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(200))
    revision: Mapped[int] = mapped_column(Integer)


class SloState(Base):
    """Where one agent's SLO budget stands (``ok``, ``warning``, ``exhausted``: deploys
    frozen). ``revision`` grows by one at each change, which a change compares and swaps,
    so that of several processes seeing the same change exactly one announces it."""

    __tablename__ = "slo_states"

    agent: Mapped[str] = mapped_column(String(200), primary_key=True)
    slo: Mapped[str] = mapped_column(String(20), primary_key=True)
    state: Mapped[str] = mapped_column(String(20))
    consumed: Mapped[float] = mapped_column(Float)
    revision: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[datetime]


class DriftSample(Base):
    """One sampled answer's (or input's) embedding, for drift detection (ops/drift.py)."""

    __tablename__ = "drift_samples"
    __table_args__ = (Index("ix_drift_samples_agent_kind_time", "agent", "kind", "created_at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    agent: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    """``output`` (the answer) or ``input`` (the last user message)."""
    model: Mapped[str] = mapped_column(String(200))
    prompt_version: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime]
    embedder: Mapped[str] = mapped_column(String(100))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    """float32, little-endian, L2-normalised."""


class DriftBaseline(Base):
    """The window an agent's current behaviour is compared with: its samples between
    ``starts_at`` and ``ends_at``."""

    __tablename__ = "drift_baselines"

    agent: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    set_at: Mapped[datetime]
    set_by: Mapped[str] = mapped_column(String(200))
    """``auto`` (the first window after a start), or who fixed it (``cli:<user>``, a key)."""


class DriftResult(Base):
    """One evaluation of an agent's current window against its baseline."""

    __tablename__ = "drift_results"
    __table_args__ = (Index("ix_drift_results_agent_time", "agent", "kind", "created_at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    agent: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime]
    level: Mapped[str] = mapped_column(String(20))
    score: Mapped[float] = mapped_column(Float)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


_SEQ = BigInteger().with_variant(Integer, "sqlite")


class RolloutRow(Base):
    """A canary or shadow rollout of an agent's candidate prompt version and/or model. Its
    state moves by compare-and-swap on ``version``; ``active_agent`` is the agent while the
    rollout is in effect (unique: one per agent), NULL once it is over."""

    __tablename__ = "rollouts"
    __table_args__ = (UniqueConstraint("active_agent", name="uq_rollouts_active_agent"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    agent: Mapped[str] = mapped_column(String(200), index=True)
    active_agent: Mapped[str | None] = mapped_column(String(200), default=None)
    change_type: Mapped[str] = mapped_column(String(100))
    strategy: Mapped[str] = mapped_column(String(40))
    candidate_prompt: Mapped[str | None] = mapped_column(String(300), default=None)
    candidate_model: Mapped[str | None] = mapped_column(String(200), default=None)
    stable_prompt: Mapped[str | None] = mapped_column(String(300), default=None)
    stable_model: Mapped[str] = mapped_column(String(200))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    stage: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(30))
    stage_started_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_decision: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class RolloutDecisionRow(Base):
    """One decision on a rollout (by the service or a person): what, why, on which figures."""

    __tablename__ = "rollout_decisions"
    __table_args__ = (Index("ix_rollout_decisions_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    stage: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(30))
    state: Mapped[str] = mapped_column(String(30))
    """The rollout's state after the decision."""
    reasons: Mapped[list[str]] = mapped_column(JSON)
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(200))


class RolloutSampleRow(Base):
    """One request of one arm of a canary stage (written in batches, off the hot path)."""

    __tablename__ = "rollout_samples"
    __table_args__ = (
        UniqueConstraint("sample_id", name="uq_rollout_samples_sample_id"),
        Index("ix_rollout_samples_stage", "rollout_id", "stage", "id"),
    )

    id: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    sample_id: Mapped[str] = mapped_column(String(32))
    rollout_id: Mapped[str] = mapped_column(String(32))
    stage: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), default=None)
    ok: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Float)
    quality: Mapped[float | None] = mapped_column(Float, default=None)
    relevance: Mapped[float | None] = mapped_column(Float, default=None)
    consistency: Mapped[float | None] = mapped_column(Float, default=None)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class ShadowPairRow(Base):
    """One mirrored request: the live answer against the candidate's to the same request."""

    __tablename__ = "shadow_pairs"
    __table_args__ = (
        UniqueConstraint("pair_id", name="uq_shadow_pairs_pair_id"),
        Index("ix_shadow_pairs_rollout", "rollout_id", "id"),
    )

    id: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    pair_id: Mapped[str] = mapped_column(String(32))
    rollout_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX), default=None)
    live_ok: Mapped[bool] = mapped_column(Boolean)
    candidate_ok: Mapped[bool] = mapped_column(Boolean)
    candidate_error: Mapped[str | None] = mapped_column(String(60), default=None)
    similarity: Mapped[float | None] = mapped_column(Float, default=None)
    self_similarity: Mapped[float | None] = mapped_column(Float, default=None)
    """The stable version's answer run again, against the live one (some pairs only)."""
    live_latency_ms: Mapped[float] = mapped_column(Float)
    candidate_latency_ms: Mapped[float] = mapped_column(Float)
    live_tokens: Mapped[int] = mapped_column(Integer)
    candidate_tokens: Mapped[int] = mapped_column(Integer)
    candidate_cost_usd: Mapped[float] = mapped_column(Float)
    live_quality: Mapped[float | None] = mapped_column(Float, default=None)
    candidate_quality: Mapped[float | None] = mapped_column(Float, default=None)
