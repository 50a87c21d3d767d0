"""Liveness, readiness and Prometheus metrics; none of them needs a key."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from guarita.api.deps import RuntimeDep
from guarita.api.openapi import errors, ok
from guarita.api.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    operation_id="health",
    response_model=None,
    responses={200: ok(Health, "The process is up"), **errors()},
)
async def health() -> Response:
    """The process is up and serving HTTP (the liveness probe)."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/ready",
    operation_id="ready",
    response_model=None,
    responses={
        200: ok(Readiness, "Ready: every check passed"),
        503: ok(Readiness, "Not ready: the checks say which part is not"),
        **errors(),
    },
)
async def ready(runtime: RuntimeDep) -> Response:
    """The store answers and the default model can serve (the readiness probe)."""
    report = await runtime.readiness()
    return Response(
        orjson.dumps(report),
        status_code=200 if report["ready"] else 503,
        media_type="application/json",
    )


@router.get(
    "/metrics",
    operation_id="metrics",
    response_model=None,
    # documentation only: the handler builds its own Response
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **errors(),
    },
)
async def metrics(runtime: RuntimeDep) -> Response:
    runtime.metrics.records_pending.set(runtime.records.pending)
    runtime.metrics.records_spooled.set(runtime.records.spooled)
    runtime.metrics.audit_pending.set(runtime.audit.writer.pending)
    runtime.metrics.audit_spooled.set(runtime.audit.writer.spooled)
    cache = runtime.cache
    if cache.enabled:  # read at scrape time: written to the multiprocess files like the rest
        runtime.metrics.cache_hit_ratio.set(cache.hit_ratio or 0.0)
        if cache.local_entries is not None:
            runtime.metrics.cache_entries.set(cache.local_entries)
        if cache.semantic is not None:
            embedder = cache.semantic.embedder
            runtime.metrics.cache_semantic_entries.set(len(cache.semantic.index))
            seen = embedder.hits + embedder.misses
            runtime.metrics.embedding_cache_hit_ratio.set(embedder.hits / seen if seen else 0.0)
    return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)
