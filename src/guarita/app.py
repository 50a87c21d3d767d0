"""``create_app(settings)``: the FastAPI application around one :class:`Runtime`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from guarita import __version__
from guarita.api import (
    admin,
    admin_drift,
    admin_prompts,
    admin_requests,
    admin_rollouts,
    admin_slo,
    agents,
    batches,
    health,
    openai,
)
from guarita.api.cached_chat import CachedChatPath
from guarita.api.cors import CorsMiddleware
from guarita.api.errors import install_error_handlers
from guarita.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from guarita.api.openapi import install_openapi
from guarita.api.security_headers import SecurityHeaders
from guarita.runtime import Runtime
from guarita.settings import Settings, load_settings
from guarita.telemetry.logging import configure_logging


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or load_settings()
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.aclose()

    docs = settings.server.docs
    app = FastAPI(
        title="Guarita",
        version=__version__,
        description="A production runtime for LLM agents: OpenAI-compatible gateway and agent API.",
        lifespan=lifespan,
        # off in production (server.docs): the three paths then answer 404
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    routers = (openai.router, agents.router, batches.router, health.router, admin.router,
               admin_prompts.router, admin_rollouts.router, admin_slo.router,
               admin_drift.router,
               admin_requests.router)  # fmt: skip
    for router in routers:
        app.include_router(router)
    app.state.endpoints = [route for router in routers for route in router.routes]
    install_openapi(app, settings)
    if runtime.cache.enabled:  # innermost: inside the body limit and the access log
        app.add_middleware(CachedChatPath, runtime=runtime)
    # an upload's multipart framing (boundaries, part headers) on top of the file's own limit
    upload_limit = settings.batches.max_file_bytes + 64 * 1024
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.server.max_body_bytes,
        paths={batches.FILE_UPLOAD_PATH: max(upload_limit, settings.server.max_body_bytes)},
    )
    if settings.server.cors.enabled:  # closed by default: no CORS headers, preflights 405
        app.add_middleware(CorsMiddleware, cors=settings.server.cors)
    tracer = runtime.tracing.tracer if runtime.tracing.enabled else None
    security = SecurityHeaders.from_settings(settings.server)
    app.add_middleware(
        RequestContextMiddleware, metrics=runtime.metrics, tracer=tracer, security=security
    )
    return app


def app_from_environment() -> FastAPI:
    """The uvicorn factory: settings from ``guarita.yaml`` and ``GUARITA_*`` variables."""
    settings = load_settings()
    configure_logging(settings.server.log_level)
    return create_app(settings)
