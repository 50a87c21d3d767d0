"""The security headers every answer carries, built once from settings.

API answers are JSON or event streams that no page should render, frame or cache:
``Content-Security-Policy: default-src 'none'``, ``X-Frame-Options: DENY``,
``Cache-Control: no-store`` (unless the endpoint sets its own, as streams do). The
``/docs`` and ``/redoc`` pages are FastAPI's Swagger UI and ReDoc, which load their scripts,
styles and fonts from public CDNs into the *browser* (the server itself needs no network)
and start with an inline script: their policy allows exactly those sources and nothing
else. With TLS on, ``Strict-Transport-Security`` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from guarita.settings import ServerSettings

Header = tuple[bytes, bytes]

API_CSP = b"default-src 'none'; frame-ancestors 'none'"
# What FastAPI's Swagger UI and ReDoc pages load (fastapi.openapi.docs): the bundles and
# styles from jsDelivr, ReDoc's fonts from Google Fonts, the favicon from fastapi.tiangolo.com,
# the schema from this server; ReDoc runs a web worker from a blob.
DOCS_CSP = (
    b"default-src 'none'; "
    b"script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    b"font-src https://fonts.gstatic.com; "
    b"img-src 'self' data: https://fastapi.tiangolo.com https://cdn.jsdelivr.net; "
    b"connect-src 'self'; worker-src blob:; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
NO_STORE: Header = (b"cache-control", b"no-store")
_COMMON: tuple[Header, ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


@dataclass(frozen=True, slots=True)
class SecurityHeaders:
    """The headers of an API answer and of a docs page (each with HSTS when TLS is on)."""

    api: tuple[Header, ...]
    docs: tuple[Header, ...]
    docs_paths: frozenset[str] = DOCS_PATHS  # none when the docs are off: 404s like others

    @classmethod
    def from_settings(cls, server: ServerSettings) -> SecurityHeaders:
        common = _COMMON
        if server.tls and server.hsts_max_age_s > 0:
            value = f"max-age={server.hsts_max_age_s}"
            if server.hsts_include_subdomains:
                value += "; includeSubDomains"
            common = (*common, (b"strict-transport-security", value.encode()))
        return cls(
            api=(*common, (b"content-security-policy", API_CSP)),
            docs=(*common, (b"content-security-policy", DOCS_CSP)),
            docs_paths=DOCS_PATHS if server.docs else frozenset(),
        )

    def add_to(self, path: str, headers: list[Header]) -> None:
        """Append this answer's headers; ``no-store`` unless it says how to cache itself."""
        if path in self.docs_paths:
            headers.extend(self.docs)
            return
        for name, _ in headers:
            if name.lower() == b"cache-control":
                break
        else:
            headers.append(NO_STORE)
        headers.extend(self.api)
