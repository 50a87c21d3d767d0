"""JSON Web Tokens beside API keys: verified here, mapped to a :class:`Caller`.

A bearer token is taken as a JWT when it has three dot-separated base64url parts and does
not start with ``gua_`` (an API key). Its header is read unverified only to choose the
key: its ``alg`` must be one of ``auth.jwt.algorithms`` (``none`` never is), and each
algorithm has its own kind of key, so no token can make one stand for another: HS256 is
checked only with the secret from ``hs256_secret_env``, RS256 only with RSA public keys
and ES256 only with P-256 public keys from the JWKS (whose symmetric ``oct`` keys are
ignored). The signature, ``exp``/``nbf``/``iat`` (with ``leeway_s``), ``iss`` and ``aud``
are then verified by PyJWT.

The JWKS comes from a file (loaded at start, read again when its mtime changes) or a URL:
fetched with a short timeout (``jwks_timeout_s``), used for ``jwks_cache_s``, fetched again
early when a token names a ``kid`` it lacks (key rotation), at most once per
``jwks_refresh_min_s``. A failed fetch keeps the keys already had. A token whose key cannot
be found is a 401 naming its ``kid``; only when no key set could ever be had (the URL was
unreachable since start) is it a 503, retried shortly: the caller's token may be fine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import structlog
from jwt.algorithms import get_default_algorithms

from guarita.errors import AuthenticationFailed, ConfigError, ServiceUnavailable
from guarita.settings import ROLES, AuthSettings, JwtSettings
from guarita.types import Caller

log = structlog.get_logger("guarita.jwt")
_PART = re.compile(r"^[A-Za-z0-9_-]*$")
MIN_SECRET_BYTES = 32
_FILE_CHECK_S = 1.0
"""A JWKS file's mtime is looked at no more often than this."""
VERIFIED_TTL_S = 30.0
"""A verified token is served from memory (no signature check) for at most this long, and
never past its ``exp``; a changed key set empties that memory."""
VERIFIED_MAX = 10_000


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts and not an API key (an empty signature counts: such an
    unsigned token is then refused as a JWT, saying why)."""
    if token.startswith("gua_"):
        return False
    parts = token.split(".")
    return len(parts) == 3 and bool(parts[0] and parts[1]) and all(map(_PART.match, parts))


def jwt_key_id(issuer: str, subject: str) -> str:
    """The ``key_id`` of a token's caller: stable for an issuer and subject, 28 characters
    (the store's key id columns hold 32), so rate limits, budgets and records keyed by
    ``key_id`` work for tokens as for keys."""
    digest = hashlib.sha256(f"{issuer}\0{subject}".encode()).hexdigest()
    return "jwt:" + digest[:24]


@dataclass(slots=True, frozen=True)
class _PublicKey:
    kid: str | None
    alg: str
    key: Any


class _Refused(Exception):
    """A token refused, with what to tell the caller."""


class JwksUnavailable(Exception):
    """No key set could be had yet (the URL unreachable, never fetched)."""


class JwtVerifier:
    def __init__(self, settings: JwtSettings, auth: AuthSettings, tiers: frozenset[str]) -> None:
        self._settings = settings
        self._auth = auth
        self._tiers = tiers
        self._algorithms = settings.effective_algorithms
        self._secret: bytes | None = None
        if "HS256" in self._algorithms:
            self._secret = _secret_from_env(settings.hs256_secret_env or "")
        self._keys: list[_PublicKey] = []
        self._verified: dict[bytes, tuple[float, Caller]] = {}
        """Tokens verified lately, by digest: their caller and until when (wall clock) it
        may be served without verifying again (their ``exp``, at most VERIFIED_TTL_S)."""
        self._loaded_at: float | None = None  # monotonic time of the last good load
        self._tried_at: float | None = None  # of the last attempt, good or not
        self._file_mtime: float | None = None
        self._file_checked_at = 0.0
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self.fetches = 0
        """JWKS URL fetches attempted (for tests and the log)."""
        if settings.jwks_file is not None:
            self._load_file(settings.jwks_file, at_start=True)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the token -------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Caller:
        digest = hashlib.blake2b(token.encode(), digest_size=16).digest()
        now = time.time()
        if self._settings.jwks_file is not None:
            self._maybe_reload_file(self._settings.jwks_file)  # a key removed: refused now
        hit = self._verified.get(digest)
        if hit is not None and now < hit[0]:
            return hit[1]
        try:
            caller, expires = await self._verify(token)
        except _Refused as exc:
            raise AuthenticationFailed(f"invalid token: {exc}") from None
        except JwksUnavailable as exc:
            raise ServiceUnavailable(
                "token signing keys cannot be fetched right now; retry shortly",
                retry_after=max(1, round(self._settings.jwks_refresh_min_s)),
                detail=f"jwks: {exc}",
            ) from None
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[digest] = (min(expires, now + VERIFIED_TTL_S), caller)
        return caller

    async def _verify(self, token: str) -> tuple[Caller, float]:
        """The token's caller and its ``exp`` (wall clock), or _Refused saying why."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _Refused("malformed JWT header") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            allowed = ", ".join(self._algorithms)
            raise _Refused(f"alg {str(alg)[:16]!r} is not accepted (accepted: {allowed})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Refused("kid must be a string")
        key: Any = self._secret if alg == "HS256" else await self._public_key(alg, kid)
        claims = self._decode(token, key, alg)
        expires = claims.get("exp")
        return self._caller(claims), float(expires) if isinstance(expires, int | float) else 0.0

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        s = self._settings
        required = list(dict.fromkeys([*s.required_claims, "sub"]))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": required, "verify_signature": True},
            )
        except jwt.InvalidSignatureError:
            raise _Refused("signature verification failed") from None
        except jwt.ExpiredSignatureError:
            raise _Refused("expired (exp is in the past)") from None
        except jwt.ImmatureSignatureError as exc:
            claim = "iat" if "iat" in str(exc) else "nbf"
            raise _Refused(f"not valid yet ({claim} is in the future)") from None
        except jwt.InvalidIssuedAtError:
            raise _Refused("iat is in the future or not a number") from None
        except jwt.InvalidAudienceError:
            raise _Refused(f"wrong audience (aud must include {s.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise _Refused(f"wrong issuer (iss must be {s.issuer!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _Refused(f"missing the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise _Refused(f"undecodable ({type(exc).__name__})") from None
        return claims

    def _caller(self, claims: dict[str, Any]) -> Caller:
        s = self._settings
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _Refused("the 'sub' claim must be a non-empty string")
        tier = claims.get(s.tier_claim, s.default_tier)
        if tier is None:
            raise _Refused(f"missing the {s.tier_claim!r} claim (no auth.jwt.default_tier)")
        if not isinstance(tier, str) or tier not in self._tiers:
            raise _Refused(f"the {s.tier_claim!r} claim names no configured tier")
        roles = _roles(claims, s.roles_claim)
        if roles is None:
            roles = self._auth.roles_of_tier(tier)
        issuer = str(claims.get("iss", s.issuer))
        return Caller(key_id=jwt_key_id(issuer, subject), name=subject[:200], tier=tier,
                      roles=roles, subject=subject, auth="jwt")  # fmt: skip

    # -- the keys --------------------------------------------------------------------------

    async def _public_key(self, alg: str, kid: str | None) -> Any:
        s = self._settings
        if s.jwks_file is not None:
            self._maybe_reload_file(s.jwks_file)
            found = self._find(alg, kid)
            if found is None:
                raise _Refused(_no_key(alg, kid))
            return found
        now = time.monotonic()
        stale = self._loaded_at is None or now - self._loaded_at >= s.jwks_cache_s
        found = None if stale else self._find(alg, kid)
        if found is None and (self._may_fetch(now) or self._lock.locked()):
            await self._fetch()  # or wait for the fetch under way
        found = self._find(alg, kid)
        if found is not None:
            return found
        if self._loaded_at is None:
            raise JwksUnavailable(f"no key set from {s.jwks_url} yet")
        raise _Refused(_no_key(alg, kid))

    def _may_fetch(self, now: float) -> bool:
        """Stale keys (``jwks_cache_s``) or an unknown kid: fetch, but never more than once
        per ``jwks_refresh_min_s``, whatever tokens arrive."""
        return self._tried_at is None or now - self._tried_at >= self._settings.jwks_refresh_min_s

    async def _fetch(self) -> None:
        url = self._settings.jwks_url
        assert url is not None
        async with self._lock:
            now = time.monotonic()
            if not self._may_fetch(now):
                return  # another request fetched while this one waited for the lock
            self._tried_at = now
            self.fetches += 1
            timeout = self._settings.jwks_timeout_s
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
            try:
                async with asyncio.timeout(timeout):  # connect, read and all, together
                    response = await self._client.get(url, headers={"accept": "application/json"})
                response.raise_for_status()
                keys = _parse_jwks(response.content)
            except (TimeoutError, httpx.HTTPError, ValueError) as exc:
                log.warning("jwks_fetch_failed", url=url, error_type=type(exc).__name__,
                            keeping=len(self._keys))  # fmt: skip
                return
            self._keys = keys
            self._verified.clear()
            self._loaded_at = time.monotonic()
            log.info("jwks_loaded", url=url, keys=len(keys))

    def _load_file(self, path: Path, *, at_start: bool = False) -> None:
        try:
            mtime = path.stat().st_mtime
            keys = _parse_jwks(path.read_bytes())
        except (OSError, ValueError) as exc:
            if at_start:
                raise ConfigError(f"auth.jwt.jwks_file: cannot use {path}: {exc}") from None
            log.warning("jwks_file_unreadable", path=str(path), error=str(exc),
                        keeping=len(self._keys))  # fmt: skip
            return
        self._keys = keys
        self._verified.clear()
        self._file_mtime = mtime
        self._loaded_at = time.monotonic()
        if not at_start:
            log.info("jwks_reloaded", path=str(path), keys=len(keys))

    def _maybe_reload_file(self, path: Path) -> None:
        now = time.monotonic()
        if now - self._file_checked_at < _FILE_CHECK_S:
            return
        self._file_checked_at = now
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return  # gone for now (being replaced): keep the keys
        if mtime != self._file_mtime:
            self._load_file(path)

    def _find(self, alg: str, kid: str | None) -> Any:
        candidates = [k for k in self._keys if k.alg == alg]
        if kid is not None:
            candidates = [k for k in candidates if k.kid == kid]
        elif len(candidates) != 1:
            return None  # no kid, and no single key of that algorithm to take
        return candidates[0].key if candidates else None


def _no_key(alg: str, kid: str | None) -> str:
    if kid is None:
        return f"no kid, and the key set has not exactly one {alg} key"
    return f"no {alg} key with kid {kid[:64]!r} in the key set"


def _roles(claims: dict[str, Any], name: str) -> frozenset[str] | None:
    """The known roles a token claims (unknown ones ignored): its roles claim (a list or a
    space-separated string), else the known role names in its ``scope``; None if neither."""
    value = claims.get(name)
    if value is None:
        value = claims.get("scope")
        if not isinstance(value, str):
            return None
        found = frozenset(value.split()) & frozenset(ROLES)
        return found or None
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        raise _Refused(f"the {name!r} claim must be a list of roles")
    return frozenset(r for r in value if isinstance(r, str)) & frozenset(ROLES)


def _parse_jwks(raw: bytes) -> list[_PublicKey]:
    """The signing keys of a JWKS usable with RS256 or ES256; others are skipped."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('not a JWKS (no "keys" list)')
    algorithms = get_default_algorithms()
    keys: list[_PublicKey] = []
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kty = entry.get("kty")
        if kty == "RSA":
            alg = "RS256"
        elif kty == "EC" and entry.get("crv") == "P-256":
            alg = "ES256"
        else:
            continue  # oct (HMAC) keys never come from a JWKS: no confusion with HS256
        if entry.get("alg", alg) != alg or "d" in entry:
            continue  # another algorithm; or a private key, published by mistake
        try:
            key = algorithms[alg].from_jwk(entry)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError):
            continue
        kid = entry.get("kid")
        keys.append(_PublicKey(kid if isinstance(kid, str) else None, alg, key))
    if not keys:
        raise ValueError("no usable RS256 or ES256 signing key")
    return keys


def _secret_from_env(variable: str) -> bytes:
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"auth.jwt.hs256_secret_env: the environment variable {variable} "
                          "is not set (it must hold the HS256 secret)")  # fmt: skip
    secret = value.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"auth.jwt.hs256_secret_env: the secret in {variable} has {len(secret)} bytes; "
            f"HS256 needs at least {MIN_SECRET_BYTES}"
        )
    return secret
