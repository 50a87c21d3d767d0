"""Conversation context by session id, where any process can continue it: the SQL store
in the embedded default, Redis in scale-out mode (``backends/sessions.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select

from guarita.store.database import Database
from guarita.store.models import ChatMessage, ChatSession


@dataclass(slots=True, frozen=True)
class Turn:
    role: str
    content: str


class SessionStore(Protocol):
    async def owner_and_history(self, session_id: str) -> tuple[str | None, list[Turn]] | None:
        """The session's key id and its latest turns (oldest first), or None if unknown."""

    async def append(
        self, session_id: str, *, agent: str, key_id: str | None, turns: list[Turn]
    ) -> None: ...


class SqlSessionStore:
    def __init__(self, db: Database, *, max_loaded: int = 200) -> None:
        self._db = db
        self._max_loaded = max_loaded

    async def owner_and_history(self, session_id: str) -> tuple[str | None, list[Turn]] | None:
        """The session's key id and its latest turns (oldest first), or None if unknown."""
        async with self._db.sessions() as session:
            row = await session.get(ChatSession, session_id)
            if row is None:
                return None
            result = await session.scalars(
                select(ChatMessage)
                .where(ChatMessage.session_id == session_id)
                .order_by(ChatMessage.id.desc())
                .limit(self._max_loaded)
            )
            turns = [Turn(m.role, m.content) for m in result]
        turns.reverse()
        return row.key_id, turns

    async def append(
        self, session_id: str, *, agent: str, key_id: str | None, turns: list[Turn]
    ) -> None:
        now = datetime.now(UTC)
        async with self._db.sessions.begin() as session:
            row = await session.get(ChatSession, session_id)
            if row is None:
                session.add(
                    ChatSession(
                        id=session_id, agent=agent, key_id=key_id, created_at=now, updated_at=now
                    )
                )
                await session.flush()
            else:
                row.updated_at = now
            session.add_all(
                ChatMessage(session_id=session_id, role=t.role, content=t.content, created_at=now)
                for t in turns
            )
