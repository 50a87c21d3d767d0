"""Cross-origin access for browser pages, from ``server.cors``: Starlette's CORS middleware,
installed only when an origin is allowed (closed by default: no CORS headers at all, and a
preflight ``OPTIONS`` finds no route, 405). A preflight it refuses is a 403 in our error
format rather than Starlette's plain-text 400."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from guarita.api.errors import error_response
from guarita.errors import PermissionDenied
from guarita.settings import CorsSettings


class CorsMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, cors: CorsSettings) -> None:
        super().__init__(
            app,
            allow_origins=cors.allow_origins,
            allow_methods=cors.allow_methods,
            allow_headers=cors.allow_headers,
            allow_credentials=cors.allow_credentials,
            expose_headers=cors.expose_headers,
            max_age=cors.max_age_s,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        # Starlette's body is "Disallowed CORS origin, method, headers"
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        return error_response(
            PermissionDenied(
                f"CORS preflight refused: {refused} not allowed (server.cors)",
                code="cors_not_allowed",
            )
        )
