"""Settings of CORS at the HTTP edge (docs/security.md): closed by default."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from guarita.settings_base import Strict as _Strict

_CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"})


class CorsSettings(_Strict):
    """Cross-origin access from browsers: closed (no CORS headers, preflights refused)
    unless ``allow_origins`` names an origin."""

    allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) a browser page may call from; '*': any.",
    )
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "DELETE"])
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-request-id"],
        description="Request headers a page may send (beyond the CORS-safelisted ones).",
    )
    expose_headers: list[str] = Field(
        default_factory=lambda: ["x-request-id", "retry-after"],
        description="Response headers a page may read.",
    )
    allow_credentials: bool = Field(
        default=False, description="Allow cookies and HTTP authentication from the browser."
    )
    max_age_s: int = Field(default=600, ge=0, description="How long a preflight is cached.")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                continue
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return value

    @field_validator("allow_methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - _CORS_METHODS)
        if unknown:
            raise ValueError(f"unknown methods {unknown} (upper case, or '*')")
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                "allow_credentials: not with '*' in allow_origins (any site could act with "
                "the user's credentials); list the origins"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.allow_origins)
