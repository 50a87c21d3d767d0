"""FastAPI dependencies: the runtime, and the authenticated caller."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import Depends, Request

from guarita.auth import USER, bearer_token, require_role
from guarita.errors import AuthenticationFailed
from guarita.jwt_auth import looks_like_jwt
from guarita.runtime import Runtime
from guarita.telemetry.audit import actor_of, key_prefix
from guarita.traffic.ratelimit import client_address
from guarita.types import Caller, RequestContext


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain def dependency in a thread pool, on every request
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_caller(request: Request) -> Caller:
    """The caller; a failed authentication is audited (``auth.failed``, the presented
    key's short prefix as the actor) before its 401 goes out."""
    runtime: Runtime = request.app.state.runtime
    client = request.client.host if request.client else None
    authorization = request.headers.get("authorization")
    try:
        if runtime.tracing.enabled:
            with runtime.tracing.tracer.start_as_current_span("guarita.auth"):
                caller = await runtime.auth.authenticate(authorization, client)
        else:
            caller = await runtime.auth.authenticate(authorization, client)
    except AuthenticationFailed:
        token = bearer_token(authorization)
        reason = (
            "missing_key"
            if not token
            else "invalid_token"
            if looks_like_jwt(token)
            else "invalid_key"
        )
        details = {"method": request.method, "reason": reason}
        record_audit(request, "access", "auth.failed", request.url.path, "denied",
                     actor=key_prefix(token), details=details)  # fmt: skip
        raise
    request_context(request).key_id = caller.key_id
    request.scope.setdefault("state", {})["caller"] = caller
    return caller


def caller_of(request: Request) -> Caller | None:
    """The request's caller once :func:`get_caller` has authenticated it."""
    return cast(Caller | None, request.scope.get("state", {}).get("caller"))


def record_audit(
    request: Request,
    category: str,
    action: str,
    target: str | None,
    outcome: str,
    *,
    actor: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """An audit entry for this request: its request id and client address, and as actor
    its caller (:func:`~guarita.telemetry.audit.actor_of`) unless ``actor`` is given."""
    runtime: Runtime = request.app.state.runtime
    if actor is None:
        caller = caller_of(request)
        actor = (
            actor_of(caller)
            if caller is not None
            else key_prefix(bearer_token(request.headers.get("authorization")))
        )
    runtime.audit.record(category, action, actor, target, outcome,
                         request_id=request_id(request), client_ip=client_ip(request),
                         details=details)  # fmt: skip


CallerDep = Annotated[Caller, Depends(get_caller)]


def request_context(request: Request) -> RequestContext:
    """What the request's log line is built from (made by the middleware)."""
    state = request.scope.setdefault("state", {})
    context = state.get("context")
    if context is None:  # an app mounted without the middleware
        context = state["context"] = RequestContext("")
    return cast(RequestContext, context)


def request_id(request: Request) -> str:
    return request_context(request).request_id


def client_ip(request: Request) -> str | None:
    """The caller's address, through the proxies ``limits.trusted_proxies`` names."""
    runtime: Runtime = request.app.state.runtime
    peer = request.client.host if request.client else None
    trusted = runtime.settings.limits.trusted_proxies
    if not trusted:
        return peer
    return client_address(peer, request.headers.get("x-forwarded-for"), trusted)


async def get_user(request: Request) -> Caller:
    """The caller of a model API (``/v1/*``, ``/api/*``): it needs the role ``user`` (or
    ``admin``); a token or key holding only ``viewer`` or ``operator`` gets a 403."""
    caller = await get_caller(request)
    require_role(caller, USER)
    return caller


UserDep = Annotated[Caller, Depends(get_user)]
