"""API keys: created by the CLI, stored as SHA-256 hashes, never kept in plain text.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching); the
lookup cache keeps authentication off the database for all but the first call of a key
in each ``ttl`` window. A revocation made anywhere (the CLI, another API process) empties
every process's cache within ``revocation_check_s``: :class:`RevocationWatch` asks the
store for its revocation mark (a count and the latest time, one small query) that often.

A key may expire (``expires_at``): :meth:`KeyStore.lookup` checks the expiry on every call,
cached answers included, so an expired key is refused from that moment on every process.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from guarita.aio import cancel_and_wait
from guarita.settings import TierLimits
from guarita.state import Broadcast
from guarita.state.listener import Listener
from guarita.store.database import Database
from guarita.store.models import ApiKey

KEY_PREFIX = "gua_"
log = structlog.get_logger("guarita.keys")


@dataclass(slots=True, frozen=True)
class KeyInfo:
    id: str
    name: str
    tier: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    limits: TierLimits | None = None
    roles: tuple[str, ...] | None = None
    """The key's own roles; None: those of its tier (``auth.tier_roles``)."""
    expires_at: datetime | None = None

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        limits = TierLimits.model_validate(row.limits) if row.limits else None
        roles = tuple(row.roles) if row.roles is not None else None
        return cls(row.id, row.name, row.tier, row.prefix, row.created_at, row.revoked_at,
                   limits, roles, _utc(row.expires_at))  # fmt: skip

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at


class KeyExpired(Exception):
    """The key presented exists but its ``expires_at`` has passed."""

    def __init__(self, info: KeyInfo) -> None:
        super().__init__(f"key {info.id} expired")
        self.info = info


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive (they were written in UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class KeyStore:
    def __init__(self, db: Database, *, cache_ttl_s: float = 30.0) -> None:
        self._db = db
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}
        self._loading: dict[str, asyncio.Future[KeyInfo | None]] = {}
        self._generation = 0

    async def create(
        self, name: str, tier: str, limits: TierLimits | None = None, *,
        roles: tuple[str, ...] | None = None, expires_at: datetime | None = None,
    ) -> tuple[str, KeyInfo]:  # fmt: skip
        """Create a key; the plain text is returned once and never stored. ``roles``: its
        own (else its tier's); ``expires_at``: when it stops working (else never)."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id="key_" + secrets.token_hex(8),
            name=name,
            tier=tier,
            key_hash=hash_key(plaintext),
            prefix=plaintext[:10],
            created_at=datetime.now(UTC),
            limits=_stored(limits),
            roles=list(roles) if roles is not None else None,
            expires_at=expires_at,
        )
        async with self._db.sessions.begin() as session:
            session.add(row)
        return plaintext, KeyInfo.of(row)

    async def list(self) -> list[KeyInfo]:
        async with self._db.sessions() as session:
            rows = await session.scalars(select(ApiKey).order_by(ApiKey.created_at))
            return [KeyInfo.of(row) for row in rows]

    async def get(self, key_id: str) -> KeyInfo | None:
        """The active key of that id (work done later on a key's behalf, such as a batch,
        runs with its tier and limits as they are then); None if revoked, expired or
        unknown."""
        async with self._db.sessions() as session:
            row = await session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        info = KeyInfo.of(row)
        return None if info.expired() else info

    async def update(
        self, key_id: str, *, tier: str | None = None, limits: TierLimits | None = None,
        replace_limits: bool = False, roles: tuple[str, ...] | None = None,
        expires_at: datetime | None = None, no_expiry: bool = False, reset_roles: bool = False,
    ) -> KeyInfo | None:  # fmt: skip
        """Change an active key's tier, limits, roles or expiry (the limits given are merged
        into the key's own, or replace them with ``replace_limits``; ``roles`` replace its
        own, ``reset_roles`` drops them (its tier's apply); ``no_expiry`` drops its expiry);
        None if there is no such key. Every process
        sees the change within ``auth.revocation_check_s``."""
        async with self._db.sessions.begin() as session:
            row = await session.scalar(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            )
            if row is None:
                return None
            if tier is not None:
                row.tier = tier
            if limits is not None or replace_limits:
                current = {} if replace_limits else dict(row.limits or {})
                current.update(_stored(limits) or {})
                row.limits = current or None
            if roles is not None:
                row.roles = list(roles)
            elif reset_roles:
                row.roles = None
            if expires_at is not None:
                row.expires_at = expires_at
            elif no_expiry:
                row.expires_at = None
            row.updated_at = datetime.now(UTC)
        self.invalidate()
        return KeyInfo.of(row)

    async def revoke(self, key_id: str) -> bool:
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        self.invalidate()
        return bool(getattr(result, "rowcount", 0))

    def invalidate(self) -> None:
        """Forget every cached lookup (a key was revoked somewhere); lookups in flight then
        answer their callers but are not cached."""
        self._generation += 1
        self._cache.clear()
        self._loading.clear()

    async def revocation_mark(self) -> tuple[int, datetime | None, datetime | None]:
        """Changes whenever a key is revoked or updated: how many are revoked, the latest
        revocation and the latest update."""
        async with self._db.sessions() as session:
            row = (
                await session.execute(
                    select(
                        func.count(ApiKey.revoked_at),
                        func.max(ApiKey.revoked_at),
                        func.max(ApiKey.updated_at),
                    )
                )
            ).one()
        return int(row[0]), row[1], row[2]

    async def lookup(self, plaintext: str) -> KeyInfo | None:
        """The active key for a presented secret, or None (unknown or revoked); raises
        :class:`KeyExpired` for a key past its ``expires_at``, checked on every call (a
        cached answer too, so the cache never serves a key past its expiry)."""
        info = await self._lookup(plaintext)
        if info is not None and info.expired():
            raise KeyExpired(info)
        return info

    async def _lookup(self, plaintext: str) -> KeyInfo | None:
        digest = hash_key(plaintext)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        # one query per key however many requests present it at once: a burst of a new
        # key's requests must not open a store connection each
        pending = self._loading.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._load(digest))
            self._loading[digest] = pending
            pending.add_done_callback(lambda _done: self._loading.pop(digest, None))
        return await asyncio.shield(pending)

    async def _load(self, digest: str) -> KeyInfo | None:
        generation = self._generation
        async with self._db.sessions() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        info = KeyInfo.of(row) if row is not None and row.revoked_at is None else None
        if generation != self._generation:
            return info  # invalidated meanwhile: the answer may predate a revocation
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._ttl, info)
        return info


CHANNEL = "keys"
"""Where a change to a key (revoked, new tier or limits) is announced to every process."""


class RevocationWatch:
    """Empties the key cache when a key changes: at once when the change is announced on
    the shared state's ``keys`` channel (:func:`announce_key_change`, which the CLI calls
    in scale-out mode), and in any case within ``interval_s``, when the store's revocation
    mark moves (a change made where no announcement reaches: another process on the same
    SQLite file, or a message lost, since publish delivers at most once)."""

    def __init__(
        self, keys: KeyStore, *, interval_s: float, broadcast: Broadcast | None = None
    ) -> None:
        self._keys = keys
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._listener = (
            Listener(broadcast, CHANNEL, self._announced, on_subscribed=keys.invalidate)
            if broadcast is not None
            else None
        )

    async def start(self) -> None:
        if self._listener is not None:
            await self._listener.start()
        self._task = asyncio.create_task(self._run(), name="key-revocations")

    def _announced(self, _message: bytes) -> None:
        self._keys.invalidate()
        log.info("key_cache_invalidated", by="announcement")

    async def _run(self) -> None:
        mark: tuple[int, datetime | None, datetime | None] | None = None
        while True:
            try:
                current = await self._keys.revocation_mark()
            except (SQLAlchemyError, OSError) as exc:
                # the store is away: keys cannot be revoked there either; look again later
                log.warning("key_revocation_check_failed", error_type=type(exc).__name__)
            else:
                if mark is not None and current != mark:
                    self._keys.invalidate()
                    log.info("key_cache_invalidated", by="store", revoked_keys=current[0])
                mark = current
            await asyncio.sleep(self._interval)

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()
        await cancel_and_wait(self._task)
        self._task = None


async def announce_key_change(broadcast: Broadcast, key_id: str) -> None:
    """Tell every process that ``key_id`` changed (their caches drop it at once)."""
    await broadcast.publish(CHANNEL, key_id.encode())


def _stored(limits: TierLimits | None) -> dict[str, Any] | None:
    """The fields a key sets itself (unset ones follow its tier)."""
    if limits is None:
        return None
    return limits.model_dump(exclude_unset=True) or None
