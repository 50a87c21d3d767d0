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


class RequestRow(Base):
    """One answered (or failed) model call: the source of truth for usage and cost. Written
    from a :class:`guarita.types.RequestRecord`, whose fields document the columns."""

    __tablename__ = "requests"
    __table_args__ = (UniqueConstraint("record_id", name="uq_requests_record_id"),)

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
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
