"""Who is calling: API keys sent as ``Authorization: Bearer``, checked against the store.

Authentication happens at the HTTP edge rather than as a pipeline stage: calls made by
workers (tasks) carry the identity captured when their request was accepted.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from guarita.errors import AuthenticationFailed, ServiceUnavailable
from guarita.settings import AuthSettings
from guarita.store.keys import KeyStore
from guarita.types import Caller

_LOCALHOST = frozenset({"127.0.0.1", "::1", "localhost"})


class Authenticator:
    def __init__(self, keys: KeyStore, settings: AuthSettings) -> None:
        self._keys = keys
        self._settings = settings

    async def authenticate(self, authorization: str | None, client_host: str | None) -> Caller:
        if not self._settings.enabled:
            return Caller.anonymous()
        token = _bearer(authorization)
        if token is None:
            if self._settings.allow_unauthenticated_localhost and client_host in _LOCALHOST:
                return Caller.anonymous()
            raise AuthenticationFailed(
                "missing API key: send it as 'Authorization: Bearer <key>' "
                "(create one with `guarita keys create`)"
            )
        try:
            info = await self._keys.lookup(token)
        except (SQLAlchemyError, OSError) as exc:
            raise ServiceUnavailable(
                "keys cannot be checked right now; retry shortly",
                retry_after=1,
                detail=f"key store: {type(exc).__name__}",
            ) from exc
        if info is None:
            raise AuthenticationFailed(f"invalid or revoked API key ({_redact(token)})")
        return Caller(key_id=info.id, name=info.name, tier=info.tier, limits=info.limits)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _redact(token: str) -> str:
    """Enough of a key to recognise it in a log, never enough to use it."""
    return token[:6] + "…" if len(token) > 10 else "…"
