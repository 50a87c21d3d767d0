"""Every error leaves in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from guarita.errors import GuaritaError, InvalidRequest

log = structlog.get_logger("guarita.api")

_HTTP_TYPES = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}


def error_response(exc: GuaritaError) -> Response:
    return Response(
        orjson.dumps(exc.to_body()),
        status_code=exc.status_code,
        media_type="application/json",
        headers=exc.headers(),
    )


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        if err.get("type") == "json_invalid":
            return f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    first = errors[0].get("loc", ()) if errors else ()
    param = ".".join(str(p) for p in first if p != "body") or None
    return "; ".join(parts), param


async def _on_guarita_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GuaritaError)
    return error_response(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(list(exc.errors()))
    return error_response(
        InvalidRequest(message or "invalid request body", param=param, code="invalid_body")
    )


async def _on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {
        "error": {
            "message": str(exc.detail),
            "type": _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
            "param": None,
            "code": None,
        }
    }
    return Response(
        orjson.dumps(body),
        status_code=exc.status_code,
        media_type="application/json",
        headers=exc.headers,
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return error_response(GuaritaError("internal error; see the server log for this request id"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GuaritaError, _on_guarita_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
