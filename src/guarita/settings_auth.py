"""Settings of authentication: roles, each tier's roles, JSON Web Tokens (docs/auth.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from guarita.settings_base import Strict as _Strict

ROLES = ("admin", "operator", "viewer", "user")
"""The roles a key or a token may hold (docs/auth.md): ``admin`` may do everything,
``operator`` the operational /admin endpoints, ``viewer`` the read-only /admin ones,
``user`` the model APIs."""
Role = Literal["admin", "operator", "viewer", "user"]
JwtAlgorithm = Literal["HS256", "RS256", "ES256"]
_DEFAULT_REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")


class JwtSettings(_Strict):
    """JSON Web Tokens accepted beside API keys (docs/auth.md): HS256 with a shared secret
    from the environment, RS256/ES256 with public keys from a JWKS file or URL."""

    enabled: bool = False
    issuer: str | None = Field(default=None, description="The `iss` every token must carry.")
    audience: str | None = Field(
        default=None, description="The `aud` every token must carry (among its values)."
    )
    algorithms: tuple[JwtAlgorithm, ...] = Field(
        default=(),
        description="Accepted `alg`s; empty: HS256 with hs256_secret_env, RS256 and ES256 "
        "with a JWKS. `none` is never accepted.",
    )
    hs256_secret_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the HS256 secret (at least "
        "32 bytes); the secret itself is never a setting.",
    )
    jwks_file: Path | None = Field(
        default=None, description="A JWKS file (reloaded when it changes)."
    )
    jwks_url: str | None = Field(default=None, description="A JWKS URL (fetched, cached).")
    jwks_cache_s: float = Field(default=300.0, gt=0, description="How long a fetched JWKS is used.")
    jwks_refresh_min_s: float = Field(
        default=10.0,
        gt=0,
        description="An unknown `kid` refetches the JWKS at most this often (key rotation).",
    )
    jwks_timeout_s: float = Field(
        default=2.0, gt=0, le=30, description="The longest a JWKS fetch may take."
    )
    leeway_s: float = Field(
        default=30.0, ge=0, le=600, description="Clock skew allowed on exp, nbf, iat."
    )
    required_claims: tuple[str, ...] = Field(
        default=_DEFAULT_REQUIRED_CLAIMS,
        description="Claims a token must carry (`sub` is always required).",
    )
    tier_claim: str = Field(default="tier", min_length=1)
    roles_claim: str = Field(default="roles", min_length=1)
    default_tier: str | None = Field(
        default=None,
        description="The tier of a token without the tier claim; unset: such a token is refused.",
    )

    @field_validator("algorithms", mode="before")
    @classmethod
    def _never_none(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list | tuple):
            for name in names:
                if isinstance(name, str) and name.lower() == "none":
                    raise ValueError("alg 'none' is never accepted (unsigned tokens)")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("hs256_secret_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "a").isalnum():
            raise ValueError(
                f"{value!r} is not an environment variable name (give the variable's name, "
                "not the secret)"
            )
        return value

    @model_validator(mode="after")
    def _complete(self) -> JwtSettings:
        if not self.enabled:
            return self
        if not self.issuer:
            raise ValueError("issuer: required when auth.jwt is enabled")
        if not self.audience:
            raise ValueError("audience: required when auth.jwt is enabled")
        if self.jwks_file is not None and self.jwks_url is not None:
            raise ValueError("jwks_file and jwks_url: give one, not both")
        jwks = self.jwks_file is not None or self.jwks_url is not None
        algorithms = self.effective_algorithms
        if not algorithms:
            raise ValueError(
                "auth.jwt needs hs256_secret_env (HS256) or jwks_file/jwks_url (RS256, ES256)"
            )
        if "HS256" in algorithms and self.hs256_secret_env is None:
            raise ValueError("algorithms: HS256 needs hs256_secret_env")
        if "HS256" not in algorithms and self.hs256_secret_env is not None:
            raise ValueError("hs256_secret_env: given, but HS256 is not in algorithms")
        public = sorted(set(algorithms) - {"HS256"})
        if public and not jwks:
            raise ValueError(f"algorithms: {', '.join(public)} need jwks_file or jwks_url")
        if jwks and not public:
            raise ValueError("jwks_file/jwks_url: given, but neither RS256 nor ES256 is in "
                             "algorithms")  # fmt: skip
        return self

    @property
    def effective_algorithms(self) -> tuple[JwtAlgorithm, ...]:
        if self.algorithms:
            return tuple(dict.fromkeys(self.algorithms))
        derived: list[JwtAlgorithm] = []
        if self.hs256_secret_env is not None:
            derived.append("HS256")
        if self.jwks_file is not None or self.jwks_url is not None:
            derived += ["RS256", "ES256"]
        return tuple(derived)


def _default_tier_roles() -> dict[str, tuple[Role, ...]]:
    return {"admin": ("admin",)}


class AuthSettings(_Strict):
    enabled: bool = True
    allow_unauthenticated_localhost: bool = Field(
        default=False,
        description="Development only: callers on 127.0.0.1/::1 need no key.",
    )
    key_cache_ttl_s: float = Field(default=30.0, ge=0)
    revocation_check_s: float = Field(
        default=0.5,
        gt=0,
        description="How often each process checks the store for revoked keys; a revocation "
        "takes effect everywhere within this.",
    )
    tier_roles: dict[str, tuple[Role, ...]] = Field(
        default_factory=_default_tier_roles,
        description="The roles of a key (or token) of each tier that has none of its own; a "
        "tier not named here: user. The ones given replace the defaults of the same name.",
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)

    @field_validator("tier_roles", mode="before")
    @classmethod
    def _over_the_default_roles(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**_default_tier_roles(), **value}
        return value

    def roles_of_tier(self, tier: str) -> frozenset[str]:
        return frozenset(self.tier_roles.get(tier, ("user",)))
