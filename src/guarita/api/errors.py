"""Every error leaves in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

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


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A pydantic validation failure as one message naming the fields, and the first one."""
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        if err.get("type") == "json_invalid":
            at = f" at character {loc[-1]}" if loc else ""
            return f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}{at}", None
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    first = errors[0] if errors else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    if param is None and isinstance(first.get("ctx"), dict):
        # Whole-body checks (schemas.check_json_body) name the field in their context.
        param = first["ctx"].get("param") if first["ctx"].get("param") != "body" else None
    return "; ".join(parts), param


_BODY_SHAPE_ERRORS = frozenset({"missing", "model_attributes_type", "dict_type", "model_type"})
_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", int: "a number"}


def _body_shape_message(request: Request, errors: list[dict[str, Any]]) -> str | None:
    """A plain message when the body as a whole is wrong: absent, not JSON, not an object."""
    if len(errors) != 1 or tuple(errors[0].get("loc", ())) != ("body",):
        return None
    err = errors[0]
    if err.get("type") not in _BODY_SHAPE_ERRORS:
        return None
    if err.get("type") == "missing":
        return "the request body is required: a JSON object (Content-Type: application/json)"
    value = err.get("input")
    if isinstance(value, bytes | bytearray):  # FastAPI parses JSON only when the type says so
        content_type = request.headers.get("content-type")
        if content_type:
            return (
                f"unsupported Content-Type {content_type!r}: send the request body as JSON "
                "with 'Content-Type: application/json'"
            )
        return (
            "missing Content-Type: send the request body as JSON "
            "with 'Content-Type: application/json'"
        )
    kind = "null" if value is None else _JSON_KINDS.get(type(value), "a number")
    return f"the request body must be a JSON object, not {kind}"


async def _on_guarita_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GuaritaError)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    shape = _body_shape_message(request, errors)
    message, param = (shape, None) if shape else validation_message(errors)
    return error_response(
        InvalidRequest(message or "invalid request body", param=param, code="invalid_body")
    )


def _http_message(request: Request, exc: HTTPException) -> tuple[str, str | None]:
    """Starlette's bare phrases ("Not Found", "There was an error parsing the body") made
    into messages that say what was wrong."""
    status, detail, cause = exc.status_code, str(exc.detail), exc.__cause__
    if status == 400 and isinstance(cause, UnicodeDecodeError):
        return f"invalid JSON body: not valid UTF-8 ({cause.reason} at byte {cause.start})", (
            "invalid_body"
        )
    if status == 400 and isinstance(cause, RecursionError):
        return "invalid JSON body: nested too deeply", "invalid_body"
    if status == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        return f"Invalid URL ({request.method} {request.url.path})", "unknown_url"
    if status == 405 and detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        allowed = _allowed_methods(request) or {
            k.lower(): v for k, v in (exc.headers or {}).items()
        }.get("allow")
        return (
            f"Method {request.method} is not allowed for {request.url.path}"
            + (f" (allowed: {allowed})" if allowed else ""),
            "method_not_allowed",
        )
    return detail, None


def _allowed_methods(request: Request) -> str | None:
    """Every method of the path: Starlette's ``Allow`` names only the first route's, and a
    path such as ``/v1/files`` has a route per method."""
    methods: set[str] = set()
    # the routers' own routes: the app holds included routers as routes of their own
    for route in getattr(request.app.state, "endpoints", request.app.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods)) or None


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message, code = _http_message(request, exc)
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        exc.headers = {**(exc.headers or {}), "Allow": allowed}
    body = {
        "error": {
            "message": message,
            "type": _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
            "param": None,
            "code": code,
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
