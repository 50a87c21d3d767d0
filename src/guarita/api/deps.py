"""FastAPI dependencies: the runtime, and the authenticated caller."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import Depends, Request

from guarita.runtime import Runtime
from guarita.traffic.ratelimit import client_address
from guarita.types import Caller


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
    info = request_info(request)
    info["key_id"] = caller.key_id
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def request_info(request: Request) -> dict[str, Any]:
    """The per-request dict the access log line is built from (set by the middleware)."""
    info = request.scope.get("state", {}).get("info")
    if info is None:
        info = {}
        request.scope.setdefault("state", {})["info"] = info
    return cast(dict[str, Any], info)


def request_id(request: Request) -> str:
    return str(request_info(request).get("request_id") or "")


def client_ip(request: Request) -> str | None:
    """The caller's address, through the proxies ``limits.trusted_proxies`` names."""
    runtime: Runtime = request.app.state.runtime
    peer = request.client.host if request.client else None
    trusted = runtime.settings.limits.trusted_proxies
    if not trusted:
        return peer
    return client_address(peer, request.headers.get("x-forwarded-for"), trusted)
