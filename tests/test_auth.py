"""Authentication against keys in a real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guarita.auth import Authenticator
from guarita.errors import AuthenticationFailed
from guarita.settings import AuthSettings
from guarita.store.database import Database
from guarita.store.keys import KeyStore


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
