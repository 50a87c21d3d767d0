"""Settings of the HTTP server: address, limits of the edge, TLS, CORS and the docs pages
(docs/configuration.md, docs/security.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from guarita.settings_base import Strict as _Strict
from guarita.settings_cors import CorsSettings


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Request line plus headers; a larger head gets 431 and the connection closed.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for a request's line and headers, from its first byte "
        "(a new connection: from its opening); slower heads get 408 (slowloris).",
    )
    worker_healthcheck_s: int = Field(
        default=30,
        ge=1,
        description="With --workers: how long an API process may take to answer the "
        "supervisor's ping before it is killed and replaced (uvicorn's default of 5 s kills "
        "busy processes on small machines, and their requests in flight with them).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ssl_certfile: Path | None = Field(
        default=None, description="PEM certificate chain: serve HTTPS (and send HSTS)."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key; default: the key inside ssl_certfile."
    )
    ssl_keyfile_password_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding the private key's password.",
    )
    hsts_max_age_s: int = Field(
        default=63_072_000,
        ge=0,
        description="Strict-Transport-Security max-age while TLS is on (0: no HSTS header).",
    )
    hsts_include_subdomains: bool = True
    cors: CorsSettings = CorsSettings()
    docs: bool = Field(
        default=True,
        description="Serve /docs, /redoc and /openapi.json; turn off in production (404).",
    )

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> ServerSettings:
        if self.ssl_certfile is None and (self.ssl_keyfile or self.ssl_keyfile_password_env):
            raise ValueError("ssl_keyfile: a private key needs ssl_certfile too")
        return self

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None
