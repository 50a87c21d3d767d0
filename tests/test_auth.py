"""Authentication against keys in a real store."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from guarita.auth import Authenticator
from guarita.errors import AuthenticationFailed
from guarita.settings import AuthSettings
from guarita.store.database import Database
from guarita.store.keys import KeyStore, RevocationWatch
from tests.helpers import GuaritaServer, wait_until


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[KeyStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    await db.migrate()
    yield KeyStore(db, cache_ttl_s=60)
    await db.aclose()


async def test_valid_key_identifies_the_caller(keys: KeyStore) -> None:
    secret, info = await keys.create("svc", "pro")
    caller = await Authenticator(keys, AuthSettings()).authenticate(f"Bearer {secret}", "10.0.0.1")
    assert (caller.key_id, caller.name, caller.tier) == (info.id, "svc", "pro")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer gua_wrong"])
async def test_missing_or_wrong_key_is_refused(keys: KeyStore, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await Authenticator(keys, AuthSettings()).authenticate(header, "127.0.0.1")
    assert caught.value.status_code == 401
    assert "gua_wrong" not in caught.value.message


async def test_revoked_key_stops_working_at_once_in_this_process(keys: KeyStore) -> None:
    secret, info = await keys.create("svc", "free")
    auth = Authenticator(keys, AuthSettings())
    await auth.authenticate(f"Bearer {secret}", None)  # cached now
    assert await keys.revoke(info.id)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {secret}", None)


async def test_development_mode_allows_only_localhost_without_a_key(keys: KeyStore) -> None:
    auth = Authenticator(keys, AuthSettings(allow_unauthenticated_localhost=True))
    assert (await auth.authenticate(None, "127.0.0.1")).key_id is None
    assert (await auth.authenticate(None, "::1")).key_id is None
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(None, "192.0.2.7")


async def test_keys_are_stored_hashed(keys: KeyStore, tmp_path: Path) -> None:
    secret, _ = await keys.create("svc", "free")
    assert secret.encode() not in (tmp_path / "k.db").read_bytes()


async def refused_within(auth: Authenticator, secret: str, what: str) -> None:
    """Poll until ``secret`` is refused (a deadline, no fixed sleep)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            await auth.authenticate(f"Bearer {secret}", None)
        except AuthenticationFailed:
            return
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_revocation_elsewhere_empties_the_cache(keys: KeyStore, tmp_path: Path) -> None:
    """Another process (the CLI, another API process) revokes: this one's cached lookup is
    dropped by its watch, well before the cache TTL (60 s here)."""
    secret, info = await keys.create("svc", "pro")
    auth = Authenticator(keys, AuthSettings())
    await auth.authenticate(f"Bearer {secret}", None)  # cached now
    elsewhere = Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    watch = RevocationWatch(keys, interval_s=0.05)
    await watch.start()
    try:
        await asyncio.sleep(0.1)  # the watch has read the mark before the revocation
        assert await KeyStore(elsewhere).revoke(info.id)
        await refused_within(auth, secret, "the revocation never reached this process")
    finally:
        await watch.aclose()
        await elsewhere.aclose()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_an_announced_change_empties_the_cache_at_once(
    keys: KeyStore, backend: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A change announced on the shared state (what the CLI does in scale-out mode) drops
    the cached lookups of every process that listens, without waiting for the store poll
    (an hour here)."""
    from guarita.state.memory import MemorySharedState
    from guarita.state.redis import RedisSharedState
    from guarita.store.keys import announce_key_change
    from tests.helpers import REDIS_URL

    if backend == "memory":
        here = elsewhere = MemorySharedState()
    else:
        here = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
        elsewhere = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
    secret, info = await keys.create("svc", "pro")
    auth = Authenticator(keys, AuthSettings())
    watch = RevocationWatch(keys, interval_s=3600, broadcast=here)
    await watch.start()  # subscribed (which empties the cache: it may have missed messages)
    try:
        await auth.authenticate(f"Bearer {secret}", None)  # cached now
        other_process = Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
        assert await KeyStore(other_process).revoke(info.id)
        await other_process.aclose()
        assert (await auth.authenticate(f"Bearer {secret}", None)).key_id == info.id, "cached"
        await announce_key_change(elsewhere, info.id)
        await refused_within(auth, secret, "the announcement never reached this process")
    finally:
        await watch.aclose()
        await here.aclose()
        if elsewhere is not here:
            await elsewhere.aclose()


@pytest.mark.slow
def test_a_key_revoked_by_the_cli_stops_working_on_every_process(tmp_path: Path) -> None:
    """Two API processes on one store (SQLite, or PostgreSQL and Redis in scale-out mode)
    with the default 30 s key cache: both refuse a key the CLI revoked within 1 s (the
    store poll is every 0.5 s; in scale-out the CLI also announces it on Redis), and a key
    that expired from the moment it did, cached or not."""
    from datetime import UTC, datetime

    config = {
        "models": {"m": {"provider": "scripted"}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
    }
    server = GuaritaServer(tmp_path, config, workers=2)
    created = server.cli("keys", "create", "--name", "to-revoke", "--tier", "pro")
    secret = created.stdout.strip()
    key_id = re.search(r"created key (key_[0-9a-f]+)", created.stderr)
    assert key_id is not None
    server.start()

    def statuses(key: str) -> set[int]:
        # new connections: both processes answer (and cache the key)
        headers = {"authorization": f"Bearer {key}", "connection": "close"}
        return {
            httpx.get(server.base_url + "/v1/models", headers=headers).status_code
            for _ in range(20)
        }

    try:
        assert statuses(secret) == {200}
        server.cli("keys", "revoke", key_id.group(1))
        wait_until(lambda: statuses(secret) == {401}, timeout=1.0, interval=0.02,
                   what="every process to refuse the revoked key within 1 s")  # fmt: skip

        expiring = server.cli("keys", "create", "--name", "temp", "--tier", "pro",
                              "--expires-in", "8s").stdout.strip()  # fmt: skip
        listed = [json.loads(line) for line in server.cli("keys", "list", "--json").stdout.split()]
        [row] = [r for r in listed if r["name"] == "temp"]
        expires_at = datetime.fromisoformat(row["expires_at"])
        assert statuses(expiring) == {200}, "works (and is cached) before its expiry"

        def refused_after_expiry() -> bool:
            codes = statuses(expiring)
            if 200 in codes:
                return False
            assert datetime.now(UTC) >= expires_at, "refused before its expiry"
            return codes == {401}

        left = (expires_at - datetime.now(UTC)).total_seconds()
        wait_until(refused_after_expiry, timeout=max(left, 0) + 1.0, interval=0.02,
                   what="every process to refuse the expired key within 1 s")  # fmt: skip
    finally:
        server.stop()


async def test_a_burst_of_one_new_keys_requests_makes_one_query(keys: KeyStore) -> None:
    """1,000 concurrent requests with a key not yet cached used to open a store connection
    each (PostgreSQL: "too many clients", 500s); they now share one lookup."""
    from sqlalchemy import event

    secret, info = await keys.create("svc", "pro")
    keys.invalidate()
    queries: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM api_keys" in statement:
            queries.append(statement)

    engine = keys._db.engine.sync_engine  # counting what reaches the store
    event.listen(engine, "before_cursor_execute", count)
    try:
        auth = Authenticator(keys, AuthSettings())
        callers = await asyncio.gather(
            *(auth.authenticate(f"Bearer {secret}", None) for _ in range(200))
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert {c.key_id for c in callers} == {info.id}
    assert len(queries) == 1
