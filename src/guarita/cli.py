"""The ``guarita`` command: serve, keys, cost, migrate."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from guarita.errors import ConfigError
from guarita.settings import Settings, load_settings
from guarita.store.keys import KeyStore
from guarita.telemetry import prices

app = typer.Typer(help="Guarita: a production runtime for LLM agents.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cost_app = typer.Typer(help="Cost estimates.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(cost_app, name="cost")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _run(factory: Callable[[Settings], Coroutine[Any, Any, T]], settings: Settings) -> T:
    try:
        return asyncio.run(factory(settings))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8080].")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes sharing the port.")] = 1,
) -> None:
    """Serve the HTTP API (embedded default: SQLite and the local model)."""
    import uvicorn

    from guarita.api.http_limits import HeaderLimits, header_limited_protocol
    from guarita.app import create_app
    from guarita.runtime import Runtime
    from guarita.telemetry.logging import configure_logging

    if host is not None:
        os.environ["GUARITA_SERVER__HOST"] = host
    if port is not None:
        os.environ["GUARITA_SERVER__PORT"] = str(port)
    settings = _settings()
    configure_logging(settings.server.log_level)
    try:
        runtime = Runtime(settings)  # validates providers and keys before anything listens
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    where = f"http://{settings.server.host}:{settings.server.port}"
    err.print(
        f"Guarita serving on {where} ({workers} process{'es' if workers > 1 else ''})",
        highlight=False,
    )
    limits = HeaderLimits(settings.server.max_header_bytes, settings.server.header_timeout_s)
    options: dict[str, Any] = dict(
        host=settings.server.host, port=settings.server.port, access_log=False, log_level="warning",
        timeout_graceful_shutdown=30,
        http=header_limited_protocol(limits),  # uvicorn bounds neither the head's size nor time
    )  # fmt: skip
    if workers == 1:
        uvicorn.run(create_app(settings, runtime=runtime), **options)
        return
    with tempfile.TemporaryDirectory(prefix="guarita-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run("guarita.app:app_from_environment", factory=True, workers=workers, **options)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks at once [default: tasks.workers].")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (a liveness probe too)."),
    ] = None,
) -> None:
    """Run a Celery worker for agent tasks (scale-out mode: task_queue = celery)."""
    from guarita.telemetry.logging import configure_logging
    from guarita.worker import run_worker

    settings = _settings()
    if settings.task_queue != "celery":
        err.print("[red]error:[/red] task_queue is 'local': tasks run inside `guarita serve`; "
                  "set GUARITA_TASK_QUEUE=celery to use workers", highlight=False)  # fmt: skip
        raise typer.Exit(2)
    configure_logging(settings.server.log_level)
    try:
        run_worker(settings, concurrency=concurrency, metrics_port=metrics_port)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def migrate() -> None:
    """Bring the store's schema up to date."""
    from guarita.store.database import Database

    async def go(settings: Settings) -> None:
        db = Database(settings.store_url)
        try:
            await db.migrate()
        finally:
            await db.aclose()

    _run(go, _settings())
    out.print("store schema is up to date")


def _with_keys(action: Callable[[KeyStore], Coroutine[Any, Any, T]]) -> T:
    """Run ``action`` on the key store of the configured database (migrated first)."""

    async def go(settings: Settings) -> T:
        from guarita.store.database import Database

        db = Database(settings.store_url)
        try:
            await db.migrate()
            return await action(KeyStore(db))
        finally:
            await db.aclose()

    return _run(go, _settings())


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    tier: Annotated[
        str, typer.Option(help="Tier: free, pro, enterprise; admin for /admin endpoints.")
    ] = "free",
) -> None:
    """Create a key. Its secret is printed once; only a hash is stored."""
    secret, info = _with_keys(lambda keys: keys.create(name, tier))
    err.print(
        f"created key {info.id} (name {name!r}, tier {tier}); "
        "store the secret now, it is not shown again:",
        highlight=False,
    )
    print(secret)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """List keys (never their secrets)."""
    keys = _with_keys(lambda store: store.list())
    if as_json:
        for info in keys:
            print(orjson.dumps(dataclasses.asdict(info)).decode())
        return
    table = Table("id", "name", "tier", "prefix", "created", "revoked")
    for info in keys:
        revoked = f"{info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else ""
        created = f"{info.created_at:%Y-%m-%d %H:%M}"
        table.add_row(info.id, info.name, info.tier, info.prefix + "…", created, revoked)
    Console(width=max(out.width, 120)).print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")]) -> None:
    """Revoke a key: every API process refuses it within `auth.revocation_check_s` (0.5 s)."""
    if not _with_keys(lambda keys: keys.revoke(key_id)):
        err.print(f"[red]error:[/red] no active key {key_id}", highlight=False)
        raise typer.Exit(1)
    out.print(f"revoked {key_id}")


@cost_app.command("project")
def cost_project(
    model: Annotated[str, typer.Option(help="A configured model or a price-table entry.")],
    daily_requests: Annotated[int, typer.Option(min=0)] = 10_000,
    input_tokens: Annotated[int, typer.Option(min=0, help="Input tokens per request.")] = 1_000,
    output_tokens: Annotated[int, typer.Option(min=0, help="Output tokens per request.")] = 500,
    days: Annotated[int, typer.Option(min=1)] = 30,
) -> None:
    """Project the monthly cost of a request mix on one model."""
    settings = _settings()
    configured = settings.models.get(model)
    price = prices.price_for(model, configured) if configured else prices.lookup(model)
    if price is None:
        known = ", ".join(sorted({*settings.models, *prices.PRICE_TABLE}))
        err.print(
            f"[red]error:[/red] no price for model {model!r}; known: {known}", highlight=False
        )
        raise typer.Exit(2)
    p = prices.project(
        price,
        daily_requests=daily_requests,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        days=days,
    )
    out.print(
        f"model {model}: ${price.input_per_1m:g} / ${price.output_per_1m:g} "
        "per 1M input / output tokens",
        highlight=False,
    )
    out.print(f"per request: ${p.per_request:.4f}", highlight=False)
    out.print(f"per day ({daily_requests:,} requests): ${p.per_day:,.2f}", highlight=False)
    out.print(f"per month ({days} days): ${p.per_month:,.2f}", highlight=False)


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # raised outside a command's own handling
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
