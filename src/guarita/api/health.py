"""Liveness, readiness and Prometheus metrics; none of them needs a key."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from guarita.api.deps import RuntimeDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> Response:
    """The process is up and serving HTTP (the liveness probe)."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready")
async def ready(runtime: RuntimeDep) -> Response:
    """The store answers and the default model can serve (the readiness probe)."""
    report = await runtime.readiness()
    return Response(
        orjson.dumps(report),
        status_code=200 if report["ready"] else 503,
        media_type="application/json",
    )


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    runtime.metrics.records_pending.set(runtime.records.pending)
    return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)
    runtime.metrics.records_spooled.set(runtime.records.spooled)
