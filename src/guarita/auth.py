"""Who is calling, and what they may do.

Callers send ``Authorization: Bearer``: an API key (``gua_…``, checked against the store)
or, with ``auth.jwt.enabled``, a JSON Web Token (:mod:`guarita.jwt_auth`). Authentication
happens at the HTTP edge rather than as a pipeline stage: calls made by workers (tasks)
carry the identity captured when their request was accepted.

What a caller may do is decided by its roles (:func:`require_role`): a key's own
(``ApiKey.roles``), else its tier's (``auth.tier_roles``); a token's roles claim, else its
tier's. docs/auth.md has the table, endpoint by endpoint.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from guarita.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from guarita.jwt_auth import JwtVerifier, looks_like_jwt
from guarita.settings import ROLES, AuthSettings, LimitSettings
from guarita.store.keys import KeyExpired, KeyStore
from guarita.telemetry.audit import key_prefix
from guarita.types import Caller

_LOCALHOST = frozenset({"127.0.0.1", "::1", "localhost"})
ADMIN = "admin"
OPERATOR = "operator"
VIEWER = "viewer"
USER = "user"


def require_role(caller: Caller, *roles: str) -> None:
    """Let ``caller`` through if it holds one of ``roles`` or ``admin`` (which may do
    everything); else 403 naming the roles needed. Anonymous local callers (auth off, or
    the localhost development mode) hold ``admin``."""
    if ADMIN in caller.roles or not caller.roles.isdisjoint(roles):
        return
    needed = [ADMIN, *(r for r in roles if r != ADMIN)]
    held = ", ".join(sorted(caller.roles)) or "none"
    what = "the role " + needed[0] if len(needed) == 1 else "one of the roles " + ", ".join(needed)
    raise PermissionDenied(f"this endpoint needs {what} (this caller's roles: {held})")


def has_role(caller: Caller, *roles: str) -> bool:
    return ADMIN in caller.roles or not caller.roles.isdisjoint(roles)


class Authenticator:
    def __init__(
        self,
        keys: KeyStore,
        settings: AuthSettings,
        *,
        tiers: frozenset[str] | None = None,
        jwt: bool = True,
    ) -> None:
        """``tiers``: the configured ones (a token's tier claim must name one); ``jwt``:
        whether to verify tokens when ``auth.jwt.enabled`` (API processes do)."""
        self._keys = keys
        self._settings = settings
        self.jwt: JwtVerifier | None = None
        if jwt and settings.enabled and settings.jwt.enabled:
            known = tiers if tiers is not None else frozenset(LimitSettings().tiers)
            self.jwt = JwtVerifier(settings.jwt, settings, known)

    async def aclose(self) -> None:
        if self.jwt is not None:
            await self.jwt.aclose()

    async def authenticate(self, authorization: str | None, client_host: str | None) -> Caller:
        if not self._settings.enabled:
            return Caller.anonymous()
        token = bearer_token(authorization)
        if token is None:
            if self._settings.allow_unauthenticated_localhost and client_host in _LOCALHOST:
                return Caller.anonymous()
            raise AuthenticationFailed(
                "missing API key: send it as 'Authorization: Bearer <key>' "
                "(create one with `guarita keys create`)"
            )
        if self.jwt is not None and looks_like_jwt(token):
            return await self.jwt.authenticate(token)
        try:
            info = await self._keys.lookup(token)
        except KeyExpired:
            raise AuthenticationFailed(f"expired API key ({key_prefix(token)})") from None
        except (SQLAlchemyError, OSError) as exc:
            raise ServiceUnavailable(
                "keys cannot be checked right now; retry shortly",
                retry_after=1,
                detail=f"key store: {type(exc).__name__}",
            ) from exc
        if info is None:
            raise AuthenticationFailed(f"invalid or revoked API key ({key_prefix(token)})")
        roles = (
            frozenset(info.roles) & frozenset(ROLES)
            if info.roles is not None
            else self._settings.roles_of_tier(info.tier)
        )
        return Caller(key_id=info.id, name=info.name, tier=info.tier, limits=info.limits,
                      roles=roles)  # fmt: skip


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header; None without one."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
