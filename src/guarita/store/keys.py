"""API keys: created by the CLI, stored as SHA-256 hashes, never kept in plain text.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching); the
lookup cache keeps authentication off the database for all but the first call of a key
in each ``ttl`` window.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update

from guarita.store.database import Database
from guarita.store.models import ApiKey

KEY_PREFIX = "gua_"


@dataclass(slots=True, frozen=True)
class KeyInfo:
    id: str
    name: str
    tier: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(row.id, row.name, row.tier, row.prefix, row.created_at, row.revoked_at)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class KeyStore:
    def __init__(self, db: Database, *, cache_ttl_s: float = 30.0) -> None:
        self._db = db
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}

    async def create(self, name: str, tier: str) -> tuple[str, KeyInfo]:
        """Create a key; the plain text is returned once and never stored."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id="key_" + secrets.token_hex(8),
            name=name,
            tier=tier,
            key_hash=hash_key(plaintext),
            prefix=plaintext[:10],
            created_at=datetime.now(UTC),
        )
        async with self._db.sessions.begin() as session:
            session.add(row)
        return plaintext, KeyInfo.of(row)

    async def list(self) -> list[KeyInfo]:
        async with self._db.sessions() as session:
            rows = await session.scalars(select(ApiKey).order_by(ApiKey.created_at))
            return [KeyInfo.of(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        self._cache.clear()
        return bool(getattr(result, "rowcount", 0))

    async def lookup(self, plaintext: str) -> KeyInfo | None:
        """The active key for a presented secret, or None."""
        digest = hash_key(plaintext)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._db.sessions() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        info = KeyInfo.of(row) if row is not None and row.revoked_at is None else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, info)
        return info
