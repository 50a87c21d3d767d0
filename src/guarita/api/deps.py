"""FastAPI dependencies: the runtime, and the authenticated caller."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from guarita.runtime import Runtime
from guarita.traffic.ratelimit import client_address
from guarita.types import Caller, RequestContext


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain def dependency in a thread pool, on every request
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_caller(request: Request) -> Caller:
    runtime: Runtime = request.app.state.runtime
    client = request.client.host if request.client else None
    if runtime.tracing.enabled:
        with runtime.tracing.tracer.start_as_current_span("guarita.auth"):
            caller = await runtime.auth.authenticate(request.headers.get("authorization"), client)
    else:
        caller = await runtime.auth.authenticate(request.headers.get("authorization"), client)
    request_context(request).key_id = caller.key_id
    return caller


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
