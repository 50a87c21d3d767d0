"""CPU per request of authentication: a cached API key against a JWT of each algorithm.

    .venv/bin/python bench/auth_verify.py [--n 20000]

Each row is ``Authenticator.authenticate`` on one event loop, as the HTTP edge calls it:
an API key found in the lookup cache (the steady state: the store is asked once per key
per ``auth.key_cache_ttl_s``), and tokens signed with HS256, RS256 (2048-bit) and ES256
(P-256): "remembered" is a token seen before (each process keeps a verified token's
caller for at most 30 s, never past its ``exp``); "first use" a new token on every call,
verified in full (signature, ``exp``, ``iss``, ``aud``, claims to a Caller).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.auth import Authenticator  # noqa: E402
from guarita.settings import AuthSettings  # noqa: E402
from guarita.store.database import Database  # noqa: E402
from guarita.store.keys import KeyStore  # noqa: E402

SECRET_ENV = "GUARITA_BENCH_JWT_SECRET"


async def measure(auth: Authenticator, tokens: list[str]) -> tuple[float, float]:
    """Median and p95 of one call per token, in microseconds."""
    for token in tokens[:200]:
        await auth.authenticate(f"Bearer {token}", "10.0.0.1")
    times = []
    for token in tokens:
        header = f"Bearer {token}"
        start = time.perf_counter()
        await auth.authenticate(header, "10.0.0.1")
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


async def main(n: int) -> None:
    os.environ[SECRET_ENV] = "b" * 48
    work = Path(tempfile.mkdtemp(prefix="guarita-auth-bench-"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            {**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r", "alg": "RS256"},
            {**json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "e", "alg": "ES256"},
        ]
    }
    (work / "jwks.json").write_text(json.dumps(jwks))
    settings = AuthSettings.model_validate(
        {
            "jwt": {
                "enabled": True,
                "issuer": "https://idp.example",
                "audience": "guarita",
                "algorithms": ["HS256", "RS256", "ES256"],
                "hs256_secret_env": SECRET_ENV,
                "jwks_file": str(work / "jwks.json"),
            }
        }
    )
    db = Database(f"sqlite+aiosqlite:///{work / 'k.db'}")
    await db.migrate()
    keys = KeyStore(db, cache_ttl_s=3600)
    secret, _ = await keys.create("bench", "pro")
    auth = Authenticator(keys, settings, tiers=frozenset({"free", "pro"}))
    now = int(time.time())
    claims = {"iss": "https://idp.example", "aud": "guarita", "sub": "svc-1", "iat": now,
              "exp": now + 3600, "tier": "pro", "roles": ["user"]}  # fmt: skip
    signers = {
        "HS256": lambda c: jwt.encode(c, os.environ[SECRET_ENV], algorithm="HS256"),
        "RS256": lambda c: jwt.encode(c, rsa_key, algorithm="RS256", headers={"kid": "r"}),
        "ES256": lambda c: jwt.encode(c, ec_key, algorithm="ES256", headers={"kid": "e"}),
    }
    rows = {"API key (cached)": [secret] * n}
    for alg, sign in signers.items():
        rows[f"JWT {alg} remembered"] = [sign(claims)] * n
    for alg, sign in signers.items():  # a new token each call: verified in full every time
        rows[f"JWT {alg} first use"] = [sign({**claims, "jti": str(i)}) for i in range(n)]
    print(f"{n} calls each; microseconds per authentication")
    for label, tokens in rows.items():
        p50, p95 = await measure(auth, tokens)
        print(f"  {label:22} p50 {p50:7.1f}  p95 {p95:7.1f}")
    await auth.aclose()
    await db.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().n))
