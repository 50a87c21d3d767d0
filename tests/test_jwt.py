"""JWT authentication: the verifier with keys made here (an HS256 secret, RSA and EC keys),
a JWKS file, and a JWKS URL served by a real local HTTP server that counts its fetches."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from guarita.auth import Authenticator, require_role
from guarita.errors import AuthenticationFailed, ConfigError, PermissionDenied, ServiceUnavailable
from guarita.jwt_auth import looks_like_jwt
from guarita.settings import AuthSettings, JwtSettings, load_settings
from guarita.store.database import Database
from guarita.store.keys import KeyStore
from guarita.types import Caller
from tests.helpers import GuaritaServer, free_port, wait_until

ISSUER = "https://id.example.test/"
AUDIENCE = "guarita"
SECRET_ENV = "GUARITA_TEST_JWT_SECRET"
SECRET = "s" * 16 + "-a-secret-of-40-bytes-" + "x" * 2
TIERS = frozenset({"free", "pro", "enterprise", "admin"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "tier": "pro",
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def forged(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: what an attacker sends (``key`` None: no signature)."""
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    if key is None:
        return f"{head}.{body}."
    return signed_raw(f"{head}.{body}", key)


def signed_raw(signing_input: str, key: bytes = SECRET.encode()) -> str:
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig"}


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[KeyStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    await db.migrate()
    yield KeyStore(db)
    await db.aclose()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def auth_with(keys: KeyStore, **jwt_settings: Any) -> Authenticator:
    base: dict[str, Any] = {"enabled": True, "issuer": ISSUER, "audience": AUDIENCE}
    settings = AuthSettings(jwt=JwtSettings(**{**base, **jwt_settings}))
    return Authenticator(keys, settings, tiers=TIERS)


async def refused(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        await auth.authenticate(f"Bearer {token}", "10.0.0.1")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert token not in caught.value.message  # never echoed
    return caught.value.message


# -- what a token is -----------------------------------------------------------------------


def test_a_jwt_is_three_base64url_parts_and_not_a_key() -> None:
    assert looks_like_jwt(hs256(claims()))
    assert not looks_like_jwt("gua_abc.def.ghi")
    assert not looks_like_jwt("gua_" + "x" * 43)
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a.b.c.d")
    assert not looks_like_jwt("a.b+/.c")


# -- HS256 ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("secret_env")
async def test_a_valid_hs256_token_identifies_its_subject(keys: KeyStore) -> None:
    auth = auth_with(keys, hs256_secret_env=SECRET_ENV)
    caller = await auth.authenticate(f"Bearer {hs256(claims(roles=['viewer']))}", None)
    assert (caller.auth, caller.subject, caller.tier) == ("jwt", "alice", "pro")
    assert caller.roles == frozenset({"viewer"})
    assert caller.key_id is not None and caller.key_id.startswith("jwt:")
    assert len(caller.key_id) <= 32
    again = await auth.authenticate(f"Bearer {hs256(claims(tier='free'))}", None)
    assert again.key_id == caller.key_id, "one subject of one issuer: one stable key_id"
    bob = await auth.authenticate(f"Bearer {hs256(claims(sub='bob'))}", None)
    assert bob.key_id != caller.key_id


@pytest.mark.usefixtures("secret_env")
async def test_roles_come_from_the_claim_else_the_tier(keys: KeyStore) -> None:
    auth = auth_with(keys, hs256_secret_env=SECRET_ENV, default_tier="free")
    as_tier = await auth.authenticate(f"Bearer {hs256(claims(tier='admin'))}", None)
    assert as_tier.roles == frozenset({"admin"})
    plain = await auth.authenticate(f"Bearer {hs256(claims(tier=None))}", None)
    assert (plain.tier, plain.roles) == ("free", frozenset({"user"}))
    odd = claims(roles=["operator", "root", "superuser"])
    assert (await auth.authenticate(f"Bearer {hs256(odd)}", None)).roles == {"operator"}
    scoped = claims(scope="openid viewer profile")
    assert (await auth.authenticate(f"Bearer {hs256(scoped)}", None)).roles == {"viewer"}


@pytest.mark.usefixtures("secret_env")
@pytest.mark.parametrize(
    ("token", "says"),
    [
        (lambda: hs256(claims(), secret="another-secret-" + "y" * 32), "signature"),
        (lambda: hs256(claims(aud="someone-else")), "audience"),
        (lambda: hs256(claims(iss="https://evil.example/")), "issuer"),
        (lambda: hs256(claims(exp=int(time.time()) - 3600)), "expired"),
        (lambda: hs256(claims(nbf=int(time.time()) + 3600)), "nbf"),
        (lambda: hs256(claims(iat=int(time.time()) + 3600)), "iat"),
        (lambda: hs256(claims(sub=None)), "'sub'"),
        (lambda: hs256(claims(exp=None)), "'exp'"),
        (lambda: hs256(claims(aud=None)), "'aud'"),
        (lambda: hs256(claims(tier="platinum")), "'tier'"),
        (lambda: hs256(claims(tier=None)), "'tier'"),
        (lambda: forged({"alg": "none", "typ": "JWT"}, claims(), None), "'none'"),
        (lambda: forged({"alg": "None", "typ": "JWT"}, claims(), None), "'None'"),
        (lambda: forged({"alg": "HS512", "typ": "JWT"}, claims(), SECRET.encode()), "HS512"),
        (lambda: forged({"alg": "RS256", "typ": "JWT"}, claims(), SECRET.encode()), "RS256"),
        (lambda: signed_raw(b64(b'{"alg":"HS256"}') + "." + b64(b"not json")), "undecodable"),
        (lambda: "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "signature"),
        (lambda: "bm90IGpzb24.bm90IGpzb24.c2ln", "header"),
    ],
)
async def test_bad_hs256_tokens_are_refused(keys: KeyStore, token: Any, says: str) -> None:
    auth = auth_with(keys, hs256_secret_env=SECRET_ENV)
    assert says in await refused(auth, token())


@pytest.mark.usefixtures("secret_env")
async def test_the_leeway_allows_a_little_clock_skew(keys: KeyStore) -> None:
    auth = auth_with(keys, hs256_secret_env=SECRET_ENV, leeway_s=30)
    just_expired = claims(exp=int(time.time()) - 5)
    assert (await auth.authenticate(f"Bearer {hs256(just_expired)}", None)).subject == "alice"
    strict = auth_with(keys, hs256_secret_env=SECRET_ENV, leeway_s=0)
    assert "expired" in await refused(strict, hs256(just_expired))


@pytest.mark.usefixtures("secret_env")
async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    keys: KeyStore, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """Key confusion: the public key (which anyone may have) used as an HMAC secret."""
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa_jwk(rsa_key, "k1")]}))
    token = forged({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(), public_pem)
    rs_only = auth_with(keys, jwks_file=jwks, algorithms=["RS256"])
    assert "'HS256' is not accepted" in await refused(rs_only, token)
    both = auth_with(keys, jwks_file=jwks, algorithms=["RS256", "HS256"],
                     hs256_secret_env=SECRET_ENV)  # fmt: skip
    assert "signature" in await refused(both, token)
    # and the other way: an RS256 token is never checked against the HMAC secret
    fake = forged({"alg": "RS256", "typ": "JWT", "kid": "hmac"}, claims(), SECRET.encode())
    assert "no RS256 key with kid 'hmac'" in await refused(both, fake)


# -- RS256 and ES256 from a JWKS file --------------------------------------------------------


async def test_rs256_and_es256_tokens_from_a_jwks_file(
    keys: KeyStore,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    tmp_path: Path,
) -> None:
    jwks = tmp_path / "jwks.json"
    oct_key = {"kty": "oct", "kid": "sym", "k": b64(SECRET.encode())}
    jwks.write_text(json.dumps({"keys": [rsa_jwk(rsa_key, "r1"), ec_jwk(ec_key, "e1"), oct_key]}))
    auth = auth_with(keys, jwks_file=jwks)
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert (await auth.authenticate(f"Bearer {rs}", None)).subject == "alice"
    es = jwt.encode(claims(sub="svc"), ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert (await auth.authenticate(f"Bearer {es}", None)).subject == "svc"
    # a token signed by a key not in the set, under a kid that is
    wrong = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert "signature" in await refused(auth, wrong)
    # the kid of the EC key with RS256: keys are matched by algorithm as well
    crossed = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "e1"})
    assert "no RS256 key with kid 'e1'" in await refused(auth, crossed)
    # the JWKS's symmetric key is ignored (and HS256 is not configured anyway)
    sym = hs256(claims(), kid="sym")
    assert "not accepted" in await refused(auth, sym)
    no_kid = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await auth.authenticate(f"Bearer {no_kid}", None)).subject == "alice", (
        "no kid, and one RS256 key: that one"
    )


async def test_a_changed_jwks_file_is_read_again(
    keys: KeyStore,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    tmp_path: Path,
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa_jwk(rsa_key, "old")]}))
    auth = auth_with(keys, jwks_file=jwks)
    new = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "new"})
    assert "kid 'new'" in await refused(auth, new)
    rotated = {"keys": [rsa_jwk(rsa_key, "old"), rsa_jwk(other_rsa_key, "new")]}
    jwks.write_text(json.dumps(rotated))
    os.utime(jwks, (time.time() + 5, time.time() + 5))  # a new mtime, whatever the clock

    async def accepted() -> bool:
        try:
            return (await auth.authenticate(f"Bearer {new}", None)).subject == "alice"
        except AuthenticationFailed:
            return False

    deadline = time.monotonic() + 10
    while not await accepted():
        assert time.monotonic() < deadline, "the rotated key never became usable"
        await asyncio.sleep(0.05)
    jwks.write_text("not json")  # a broken file keeps the keys already loaded
    os.utime(jwks, (time.time() + 10, time.time() + 10))
    assert auth.jwt is not None
    auth.jwt._file_checked_at = 0.0  # look at the file on the next call (not a second later)
    # a token not seen before, so that it is verified with the keys (not remembered)
    new = jwt.encode(claims(jti="2"), other_rsa_key, algorithm="RS256", headers={"kid": "new"})
    assert await accepted()
    assert auth.jwt._file_mtime is not None and auth.jwt._file_mtime < time.time() + 10


@pytest.mark.usefixtures("secret_env")
async def test_a_remembered_token_is_not_served_past_its_exp(keys: KeyStore) -> None:
    """Each process remembers a verified token for a while; never past its ``exp``."""
    auth = auth_with(keys, hs256_secret_env=SECRET_ENV, leeway_s=0)
    token = hs256(claims(exp=int(time.time()) + 2))
    assert (await auth.authenticate(f"Bearer {token}", None)).subject == "alice"
    deadline = time.monotonic() + 15
    while True:
        try:
            await auth.authenticate(f"Bearer {token}", None)
        except AuthenticationFailed as exc:
            assert "expired" in str(exc)
            break
        assert time.monotonic() < deadline, "an expired token was still served"
        await asyncio.sleep(0.05)


async def test_a_key_removed_from_the_jwks_file_refuses_its_remembered_tokens(
    keys: KeyStore, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa_jwk(rsa_key, "a"), rsa_jwk(other_rsa_key, "b")]}))
    auth = auth_with(keys, jwks_file=jwks)
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "a"})
    assert (await auth.authenticate(f"Bearer {token}", None)).subject == "alice"
    jwks.write_text(json.dumps({"keys": [rsa_jwk(other_rsa_key, "b")]}))  # "a" withdrawn
    os.utime(jwks, (time.time() + 5, time.time() + 5))
    deadline = time.monotonic() + 10
    while True:
        try:
            await auth.authenticate(f"Bearer {token}", None)
        except AuthenticationFailed as exc:
            assert "kid 'a'" in str(exc)
            break
        assert time.monotonic() < deadline, "a token of a withdrawn key was still served"
        await asyncio.sleep(0.05)


def test_a_missing_or_broken_jwks_file_stops_the_start(tmp_path: Path) -> None:
    keys = KeyStore(Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"))
    with pytest.raises(ConfigError, match="jwks_file"):
        auth_with(keys, jwks_file=tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    with pytest.raises(ConfigError, match="no usable RS256 or ES256"):
        auth_with(keys, jwks_file=tmp_path / "bad.json")


# -- a JWKS URL ----------------------------------------------------------------------------


class JwksServer:
    """A real HTTP server on loopback serving a JWKS, counting its fetches."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


async def test_a_jwks_url_is_fetched_once_and_cached(
    keys: KeyStore, rsa_key: rsa.RSAPrivateKey, jwks_server: JwksServer
) -> None:
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "k1")]}
    auth = auth_with(keys, jwks_url=jwks_server.url, jwks_cache_s=3600, jwks_refresh_min_s=3600)
    try:
        token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        callers = await asyncio.gather(
            *(auth.authenticate(f"Bearer {token}", None) for _ in range(50))
        )
        assert {c.subject for c in callers} == {"alice"}
        for _ in range(50):
            await auth.authenticate(f"Bearer {token}", None)
        assert jwks_server.fetches == 1
        # unknown kids, many of them: not one fetch more within jwks_refresh_min_s
        for n in range(100):
            stranger = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": f"x{n}"})
            assert "kid" in await refused(auth, stranger)
        assert jwks_server.fetches == 1
    finally:
        await auth.aclose()


async def test_an_unknown_kid_refetches_the_jwks_once_the_rate_limit_allows(
    keys: KeyStore,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    jwks_server: JwksServer,
) -> None:
    """Key rotation: the issuer publishes a new key and signs with it; the first token with
    its kid fetches the set again (once the refresh interval since the last fetch is over)."""
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "k1")]}
    auth = auth_with(keys, jwks_url=jwks_server.url, jwks_cache_s=3600, jwks_refresh_min_s=0.3)
    try:
        old = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        await auth.authenticate(f"Bearer {old}", None)
        assert jwks_server.fetches == 1
        jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "k1"), rsa_jwk(other_rsa_key, "k2")]}
        new = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "k2"})
        outcomes: list[bool] = []

        async def accepted() -> bool:
            try:
                await auth.authenticate(f"Bearer {new}", None)
            except AuthenticationFailed:
                outcomes.append(False)
                return False
            outcomes.append(True)
            return True

        deadline = time.monotonic() + 10
        while not await accepted():
            assert time.monotonic() < deadline, "the rotated key never became usable"
            await asyncio.sleep(0.01)
        assert jwks_server.fetches == 2, "refused tries in between fetched nothing"
        await auth.authenticate(f"Bearer {old}", None)
        assert jwks_server.fetches == 2
    finally:
        await auth.aclose()


async def test_a_failed_fetch_keeps_the_old_keys(
    keys: KeyStore, rsa_key: rsa.RSAPrivateKey, jwks_server: JwksServer
) -> None:
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "k1")]}
    auth = auth_with(keys, jwks_url=jwks_server.url, jwks_cache_s=0.05, jwks_refresh_min_s=0.05)
    try:
        token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        await auth.authenticate(f"Bearer {token}", None)
        jwks_server.close()  # the issuer's server goes away
        await asyncio.sleep(0.2)  # the cached set is stale: the next call tries to fetch
        for _ in range(3):
            assert (await auth.authenticate(f"Bearer {token}", None)).subject == "alice"
            await asyncio.sleep(0.06)
        stranger = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k9"})
        assert "kid 'k9'" in await refused(auth, stranger)
    finally:
        await auth.aclose()
        jwks_server.thread.join(timeout=5)


async def test_an_unreachable_jwks_url_answers_503_within_the_timeout(
    keys: KeyStore, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A JWKS URL that accepts connections and never answers, and one that refuses them:
    the token's request ends (503, retry) instead of hanging."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepted by the kernel, never answered
    try:
        token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        for url in (
            f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json",
            f"http://127.0.0.1:{free_port()}/jwks.json",
        ):
            auth = auth_with(keys, jwks_url=url, jwks_timeout_s=0.3, jwks_refresh_min_s=3600)
            try:
                with pytest.raises(ServiceUnavailable) as caught:
                    # the bound here only keeps a broken build from hanging the suite
                    await asyncio.wait_for(auth.authenticate(f"Bearer {token}", None), 30)
                assert caught.value.status_code == 503
                assert "signing keys" in caught.value.message
                assert caught.value.retry_after is not None
                assert auth.jwt is not None and auth.jwt.fetches == 1
                with pytest.raises(ServiceUnavailable):  # within the refresh interval: no fetch
                    await asyncio.wait_for(auth.authenticate(f"Bearer {token}", None), 30)
                assert auth.jwt.fetches == 1
            finally:
                await auth.aclose()
    finally:
        silent.close()


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jwt_settings", "says"),
    [
        ({"audience": AUDIENCE, "hs256_secret_env": "S"}, "issuer: required"),
        ({"issuer": ISSUER, "hs256_secret_env": "S"}, "audience: required"),
        ({"issuer": ISSUER, "audience": AUDIENCE}, "needs hs256_secret_env"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["none"]}, "never accepted"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["HS384"]}, "HS256"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["HS256"]}, "hs256_secret_env"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256"]}, "jwks_file or jwks"),
        (
            {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": "/a", "jwks_url": "https://b"},
            "not both",
        ),
        ({"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "ftp://b"}, "http(s) URL"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "hs256_secret_env": "a secret!"}, "variable"),
        (
            {"issuer": ISSUER, "audience": AUDIENCE, "hs256_secret_env": "S", "default_tier": "x"},
            "default_tier: unknown tier 'x'",
        ),
    ],
)
def test_invalid_jwt_settings_are_refused(jwt_settings: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(auth={"jwt": {"enabled": True, **jwt_settings}})
    assert says in str(caught.value)


def test_tier_roles_name_known_tiers_and_roles() -> None:
    with pytest.raises(ConfigError, match=r"tier_roles\.gold: unknown tier"):
        load_settings(auth={"tier_roles": {"gold": ["admin"]}})
    with pytest.raises(ConfigError, match=r"tier_roles\.pro"):
        load_settings(auth={"tier_roles": {"pro": ["root"]}})
    settings = load_settings(auth={"tier_roles": {"pro": ["user", "viewer"]}})
    assert settings.auth.roles_of_tier("pro") == {"user", "viewer"}
    assert settings.auth.roles_of_tier("admin") == {"admin"}
    assert settings.auth.roles_of_tier("free") == {"user"}


@pytest.mark.parametrize(
    ("value", "says"),
    [(None, f"{SECRET_ENV} is not set"), ("short", f"the secret in {SECRET_ENV} has 5 bytes")],
)
def test_a_missing_or_short_secret_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, says: str
) -> None:
    if value is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, value)
    keys = KeyStore(Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"))
    with pytest.raises(ConfigError) as caught:
        auth_with(keys, hs256_secret_env=SECRET_ENV)
    assert says in str(caught.value)


# -- roles ---------------------------------------------------------------------------------


def test_require_role() -> None:
    def caller(*roles: str) -> Caller:
        return Caller(key_id="k", name="n", tier="pro", roles=frozenset(roles))

    require_role(caller("admin"), "operator")  # admin: everything
    require_role(caller("operator"), "viewer", "operator")
    require_role(Caller.anonymous(), "operator")  # auth off / localhost development
    with pytest.raises(PermissionDenied) as caught:
        require_role(caller("viewer"), "operator")
    assert caught.value.status_code == 403
    assert "needs one of the roles admin, operator" in caught.value.message
    assert "roles: viewer" in caught.value.message
    with pytest.raises(PermissionDenied, match="roles: none"):
        require_role(caller(), "user")


async def test_a_key_has_its_own_roles_or_its_tiers(keys: KeyStore) -> None:
    auth = Authenticator(keys, AuthSettings())
    own, _ = await keys.create("ops", "pro", roles=("operator", "viewer"))
    plain, _ = await keys.create("app", "pro")
    admin, _ = await keys.create("root", "admin")
    assert (await auth.authenticate(f"Bearer {own}", None)).roles == {"operator", "viewer"}
    assert (await auth.authenticate(f"Bearer {plain}", None)).roles == {"user"}
    assert (await auth.authenticate(f"Bearer {admin}", None)).roles == {"admin"}


# -- keys expire ---------------------------------------------------------------------------


async def test_an_expired_key_is_refused_even_from_the_cache(keys: KeyStore) -> None:
    from datetime import UTC, datetime, timedelta

    expires = datetime.now(UTC) + timedelta(seconds=1)
    secret, info = await keys.create("temp", "pro", expires_at=expires)
    auth = Authenticator(keys, AuthSettings())
    assert (await auth.authenticate(f"Bearer {secret}", None)).key_id == info.id  # cached now

    async def expired() -> bool:
        try:
            await auth.authenticate(f"Bearer {secret}", None)
        except AuthenticationFailed as exc:
            assert "expired API key" in exc.message
            assert datetime.now(UTC) >= expires, "refused before its expiry"
            return True
        return False

    deadline = time.monotonic() + 10
    while not await expired():
        assert time.monotonic() < deadline, "the expired key was still accepted"
        await asyncio.sleep(0.02)
    assert await keys.get(info.id) is None  # work done later on its behalf stops too
    renewed = await keys.update(info.id, no_expiry=True)
    assert renewed is not None and renewed.expires_at is None
    assert (await auth.authenticate(f"Bearer {secret}", None)).key_id == info.id


# -- through a real server, with the openai SDK ----------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey
) -> Iterator[GuaritaServer]:
    workdir = Path(tmp_path_factory.mktemp("jwt-gateway"))
    jwks = workdir / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa_jwk(rsa_key, "r1")]}))
    config = {
        "models": {"m": {"provider": "scripted"}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        "auth": {
            "jwt": {
                "enabled": True,
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "algorithms": ["HS256", "RS256"],
                "hs256_secret_env": SECRET_ENV,
                "jwks_file": str(jwks),
            }
        },
    }
    server = GuaritaServer(workdir, config, env={SECRET_ENV: SECRET})
    server.start()
    yield server
    server.stop()


def sdk(server: GuaritaServer, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=token, max_retries=0)  # type: ignore[attr-defined]


def ask(server: GuaritaServer, token: str) -> str:
    answer = sdk(server, token).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}]
    )
    return answer.choices[0].message.content or ""


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_valid_jwt_gets_a_chat_completion(
    gateway: GuaritaServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert ask(gateway, hs256(claims()))
    rs = jwt.encode(claims(sub="svc"), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert ask(gateway, rs)


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (lambda: hs256(claims(), secret="another-secret-" + "y" * 32), "signature"),
        (lambda: hs256(claims(aud="someone-else")), "audience"),
        (lambda: hs256(claims(exp=int(time.time()) - 3600)), "expired"),
        (lambda: forged({"alg": "none", "typ": "JWT"}, claims(), None), "'none'"),
    ],
)
def test_a_bad_jwt_is_a_401(gateway: GuaritaServer, token: Any, says: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(gateway, token())
    assert caught.value.status_code == 401
    error = caught.value.response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert says in error["message"]


def test_a_viewer_reads_admin_endpoints_and_changes_nothing(gateway: GuaritaServer) -> None:
    viewer = hs256(claims(sub="dashboard", roles=["viewer"]))
    assert httpx.get(gateway.base_url + "/admin/cache", headers=bearer(viewer)).status_code == 200
    assert httpx.get(gateway.base_url + "/admin/usage", headers=bearer(viewer)).status_code == 200
    cleared = httpx.post(gateway.base_url + "/admin/cache/clear", headers=bearer(viewer), json={})
    assert cleared.status_code == 403
    assert cleared.json()["error"]["type"] == "permission_error"
    assert "operator" in cleared.json()["error"]["message"]
    with pytest.raises(openai.PermissionDeniedError):  # the model APIs need the role user
        ask(gateway, viewer)
    operator = hs256(claims(sub="oncall", roles=["operator"]))
    ok = httpx.post(gateway.base_url + "/admin/cache/clear", headers=bearer(operator), json={})
    assert ok.status_code == 200
    user = hs256(claims())  # tier pro: the role user
    assert httpx.get(gateway.base_url + "/admin/cache", headers=bearer(user)).status_code == 403


def test_a_token_callers_admin_calls_are_audited_by_subject(gateway: GuaritaServer) -> None:
    """The audit log names a token's caller ``jwt:<sub>``; only the role admin reads it."""
    viewer = hs256(claims(sub="auditee", roles=["viewer"]))
    assert httpx.get(gateway.base_url + "/admin/cache", headers=bearer(viewer)).status_code == 200
    refused = httpx.get(gateway.base_url + "/admin/audit", headers=bearer(viewer))
    assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
    admin = hs256(claims(sub="auditor", roles=["admin"]))

    def entries() -> list[dict[str, Any]]:
        answer = httpx.get(
            gateway.base_url + "/admin/audit",
            params={"actor": "jwt:auditee"},
            headers=bearer(admin),
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["data"])

    wait_until(lambda: len(entries()) >= 2, timeout=20, what="the viewer's calls audited")
    outcomes = {(e["action"], e["outcome"]) for e in entries()}
    assert {("admin.cacheStatus", "success"), ("admin.listAudit", "denied")} <= outcomes


def test_the_cli_remote_commands_take_a_jwt(gateway: GuaritaServer) -> None:
    def cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**gateway.env, "GUARITA_ADMIN_KEY": token}
        return subprocess.run([sys.executable, "-m", "guarita.cli", *args, "--url",
                               gateway.base_url], env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    viewer = hs256(claims(sub="dashboard", roles=["viewer"]))
    stats = cli(viewer, "cache", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "entries" in json.loads(stats.stdout)
    refused = cli(viewer, "cache", "clear")
    assert refused.returncode == 1
    assert "operator" in refused.stderr and "--role operator" in refused.stderr
    operator = hs256(claims(sub="oncall", roles=["operator"]))
    cleared = cli(operator, "cache", "clear")
    assert cleared.returncode == 0, cleared.stderr
    assert "cleared" in cleared.stdout
    expired = cli(hs256(claims(roles=["admin"], exp=int(time.time()) - 3600)), "economy", "status")
    assert expired.returncode == 1 and "expired" in expired.stderr


def test_a_key_made_with_expires_in_works_until_it_expires(gateway: GuaritaServer) -> None:
    from datetime import UTC, datetime

    created = gateway.cli("keys", "create", "--name", "temp", "--tier", "pro",
                          "--expires-in", "6s")  # fmt: skip
    secret = created.stdout.strip()
    listed = [json.loads(line) for line in gateway.cli("keys", "list", "--json").stdout.split()]
    [row] = [r for r in listed if r["name"] == "temp"]
    expires_at = datetime.fromisoformat(row["expires_at"])
    assert ask(gateway, secret)  # works now

    def refused() -> bool:
        try:
            ask(gateway, secret)
        except openai.AuthenticationError as exc:
            assert "expired API key" in exc.response.json()["error"]["message"]
            assert datetime.now(UTC) >= expires_at, "refused before its expiry"
            return True
        return False

    wait_until(refused, timeout=60, interval=0.1, what="the key to expire")


def test_a_missing_secret_stops_the_start(tmp_path: Path) -> None:
    config = {
        "models": {"m": {"provider": "scripted"}},
        "agents": {"a": {"model": "m"}},
        "default_agent": "a",
        "auth": {"jwt": {"enabled": True, "issuer": ISSUER, "audience": AUDIENCE,
                         "hs256_secret_env": "GUARITA_TEST_ABSENT_SECRET"}},
    }  # fmt: skip
    server = GuaritaServer(tmp_path, config)
    result = subprocess.run(
        [sys.executable, "-m", "guarita.cli", "serve", "--port", str(server.port)],
        env=server.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "GUARITA_TEST_ABSENT_SECRET is not set" in result.stderr
