"""The ``guarita`` command: serve, keys, cost, migrate."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from guarita.errors import ConfigError
from guarita.settings import Settings, TierLimits, load_settings
from guarita.store.keys import KeyStore
from guarita.store.usage import (
    DEFAULT_DAYS,
    UsageCounts,
    UsageQuery,
    UsageReport,
    parse_grouping,
    parse_time,
    usage_report,
)
from guarita.telemetry import prices

app = typer.Typer(help="Guarita: a production runtime for LLM agents.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cost_app = typer.Typer(help="Cost estimates.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
economy_app = typer.Typer(
    help="Economy mode of used-up budgets (on a running server).", no_args_is_help=True
)
app.add_typer(cost_app, name="cost")
app.add_typer(economy_app, name="economy")
cache_app = typer.Typer(
    help="The response cache of a running server (GUARITA_ADMIN_KEY: an admin key).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")

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


def _with_keys(
    action: Callable[[KeyStore], Coroutine[Any, Any, T]], *, changes: str | None = None
) -> T:
    """Run ``action`` on the key store of the configured database (migrated first). When it
    ``changes`` a key and succeeds, announce it on the shared state (scale-out mode), so
    every API process drops the key from its cache at once (else within
    ``auth.revocation_check_s``, when it sees the store change)."""

    async def go(settings: Settings) -> T:
        from guarita.store.database import Database

        db = Database(settings.store_url)
        try:
            await db.migrate()
            result = await action(KeyStore(db))
        finally:
            await db.aclose()
        if changes is not None and result and settings.redis_url:
            await _announce_key_change(settings, changes)
        return result

    return _run(go, _settings())


RpmOption = Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")]
RpdOption = Annotated[int | None, typer.Option("--rpd", min=1, help="Requests per day.")]
TpmOption = Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute.")]
ConcurrencyOption = Annotated[
    int | None, typer.Option("--concurrency", min=1, help="Requests at once.")
]
MaxTokensOption = Annotated[
    int | None, typer.Option("--max-tokens", min=1, help="Largest max_tokens per request.")
]
ModelsOption = Annotated[
    str | None, typer.Option("--models", help="Comma-separated models and agents it may use.")
]
DailyBudgetOption = Annotated[
    float | None, typer.Option("--daily-budget-usd", min=0.000001, help="Spend per UTC day.")
]
MonthlyBudgetOption = Annotated[
    float | None,
    typer.Option("--monthly-budget-usd", min=0.000001, help="Spend per UTC calendar month."),
]


def _key_limits(
    settings: Settings, *, rpm: int | None, rpd: int | None, tpm: int | None,
    concurrency: int | None, max_tokens: int | None, models: str | None,
    daily_budget: float | None = None, monthly_budget: float | None = None,
) -> TierLimits | None:  # fmt: skip
    """The limits a key sets over its tier, from the CLI's options (only those given)."""
    given: dict[str, object] = {
        "requests_per_minute": rpm, "requests_per_day": rpd, "tokens_per_minute": tpm,
        "concurrent_requests": concurrency, "max_tokens": max_tokens,
        "daily_budget_usd": daily_budget, "monthly_budget_usd": monthly_budget,
    }  # fmt: skip
    values = {k: v for k, v in given.items() if v is not None}
    if models is not None:
        names = [m.strip() for m in models.split(",") if m.strip()]
        unknown = [n for n in names if n not in settings.models and n not in settings.agents]
        if unknown:
            err.print(f"[red]error:[/red] --models: unknown model {unknown[0]!r}", highlight=False)
            raise typer.Exit(2)
        values["models"] = names
    return TierLimits.model_validate(values) if values else None


def _known_tier(settings: Settings, tier: str) -> None:
    if tier not in settings.limits.tiers:
        known = ", ".join(sorted(settings.limits.tiers))
        err.print(f"[red]error:[/red] --tier: unknown tier {tier!r} (known: {known})",
                  highlight=False)  # fmt: skip
        raise typer.Exit(2)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    tier: Annotated[
        str, typer.Option(help="A tier of limits.tiers: free, pro, enterprise, admin, ...")
    ] = "free",
    rpm: RpmOption = None,
    rpd: RpdOption = None,
    tpm: TpmOption = None,
    concurrency: ConcurrencyOption = None,
    max_tokens: MaxTokensOption = None,
    models: ModelsOption = None,
    daily_budget_usd: DailyBudgetOption = None,
    monthly_budget_usd: MonthlyBudgetOption = None,
) -> None:
    """Create a key; its own limits (if any) override its tier's. Its secret is printed
    once; only a hash is stored."""
    settings = _settings()
    _known_tier(settings, tier)
    limits = _key_limits(settings, rpm=rpm, rpd=rpd, tpm=tpm, concurrency=concurrency,
                         max_tokens=max_tokens, models=models, daily_budget=daily_budget_usd,
                         monthly_budget=monthly_budget_usd)  # fmt: skip
    secret, info = _with_keys(lambda keys: keys.create(name, tier, limits))
    err.print(
        f"created key {info.id} (name {name!r}, tier {tier}); "
        "store the secret now, it is not shown again:",
        highlight=False,
    )
    print(secret)


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    tier: Annotated[str | None, typer.Option(help="A new tier.")] = None,
    rpm: RpmOption = None,
    rpd: RpdOption = None,
    tpm: TpmOption = None,
    concurrency: ConcurrencyOption = None,
    max_tokens: MaxTokensOption = None,
    models: ModelsOption = None,
    daily_budget_usd: DailyBudgetOption = None,
    monthly_budget_usd: MonthlyBudgetOption = None,
    reset_limits: Annotated[
        bool, typer.Option("--reset-limits", help="Drop the key's own limits first.")
    ] = False,
) -> None:
    """Change a key's tier or its own limits; every API process applies it within
    `auth.revocation_check_s`."""
    settings = _settings()
    if tier is not None:
        _known_tier(settings, tier)
    limits = _key_limits(settings, rpm=rpm, rpd=rpd, tpm=tpm, concurrency=concurrency,
                         max_tokens=max_tokens, models=models, daily_budget=daily_budget_usd,
                         monthly_budget=monthly_budget_usd)  # fmt: skip
    info = _with_keys(
        lambda keys: keys.update(key_id, tier=tier, limits=limits, replace_limits=reset_limits),
        changes=key_id,
    )
    if info is None:
        err.print(f"[red]error:[/red] no active key {key_id}", highlight=False)
        raise typer.Exit(1)
    own = info.limits.model_dump(exclude_unset=True) if info.limits else {}
    out.print(f"updated {key_id}: tier {info.tier}, own limits {own or 'none'}", highlight=False)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """List keys (never their secrets)."""
    keys = _with_keys(lambda store: store.list())
    if as_json:
        for info in keys:
            row = dataclasses.asdict(info)
            row["limits"] = info.limits.model_dump(exclude_unset=True) if info.limits else None
            print(orjson.dumps(row).decode())
        return
    table = Table("id", "name", "tier", "own limits", "prefix", "created", "revoked")
    for info in keys:
        revoked = f"{info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else ""
        created = f"{info.created_at:%Y-%m-%d %H:%M}"
        own = info.limits.model_dump(exclude_unset=True) if info.limits else {}
        limits = ", ".join(f"{k}={v}" for k, v in own.items())
        table.add_row(info.id, info.name, info.tier, limits, info.prefix + "…", created, revoked)
    Console(width=max(out.width, 120)).print(table)


async def _announce_key_change(settings: Settings, key_id: str) -> None:
    from guarita.state.redis import RedisSharedState
    from guarita.store.keys import announce_key_change

    try:
        async with RedisSharedState.from_url(
            settings.redis_url or "", prefix=settings.redis_prefix, max_connections=2
        ) as state:
            await announce_key_change(state, key_id)
    except Exception as exc:  # noqa: BLE001 - the processes see it in the store anyway
        err.print(
            f"[yellow]warning:[/yellow] could not announce the change on Redis "
            f"({type(exc).__name__}); API processes see it within auth.revocation_check_s",
            highlight=False,
        )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")]) -> None:
    """Revoke a key: every API process refuses it at once with Redis, and in any case within
    `auth.revocation_check_s` (0.5 s)."""
    if not _with_keys(lambda keys: keys.revoke(key_id), changes=key_id):
        err.print(f"[red]error:[/red] no active key {key_id}", highlight=False)
        raise typer.Exit(1)
    out.print(f"revoked {key_id}")


UrlOption = Annotated[
    str, typer.Option("--url", help="The running server [default: http://127.0.0.1:8080].")
]


def _admin(method: str, url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call an /admin endpoint of a running server with the key in GUARITA_ADMIN_KEY."""
    import httpx

    key = os.environ.get("GUARITA_ADMIN_KEY", "").strip()
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, url.rstrip("/") + path, json=body, headers=headers,
                                 timeout=10)  # fmt: skip
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] --url: cannot reach {url} ({exc})", highlight=False)
        raise typer.Exit(1) from None
    if response.status_code != 200:
        message = response.json().get("error", {}).get("message", response.text)
        hint = (
            " (set GUARITA_ADMIN_KEY to an admin key)" if response.status_code in (401, 403) else ""
        )
        err.print(f"[red]error:[/red] {message}{hint}", highlight=False)
        raise typer.Exit(1)
    return response.json()


@cache_app.command("stats")
def cache_stats(url: UrlOption = "http://127.0.0.1:8080") -> None:
    """The cache's entries, and the answering process's lookups, hit ratio and saving."""
    print(orjson.dumps(_admin("GET", url, "/admin/cache"), option=orjson.OPT_INDENT_2).decode())


@cache_app.command("clear")
def cache_clear(
    namespace: Annotated[
        str | None,
        typer.Option(help="key:<key id> or agent:<name>; absent: every entry."),
    ] = None,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Drop cached answers: one namespace's, or all (in Redis: for every process)."""
    body = {"namespace": namespace} if namespace else {}
    cleared = _admin("POST", url, "/admin/cache/clear", body)["cleared"]
    out.print(f"cleared {cleared} entries of {namespace or 'every namespace'}")


@cache_app.command("warm")
def cache_warm(
    file: Annotated[Path, typer.Argument(help="JSONL: chat request bodies, or Batch API lines.")],
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 10,
    attempts: Annotated[int, typer.Option(min=1, help="Tries per line on a 429 or 5xx.")] = 3,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Pre-compute answers: send every request of FILE through the running server (its
    limits and costs apply) so that the cache holds them, with the key in GUARITA_API_KEY
    (entries land in its namespace). Resumable: progress is kept in FILE.warm, and a second
    run sends only the lines not stored yet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from guarita.cache import warm

    try:
        lines = warm.read_requests(file)
    except (OSError, warm.WarmFileError) as exc:
        err.print(f"[red]error:[/red] {file}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    progress_file = warm.progress_path(file)
    done = warm.done_lines(progress_file)
    left = sum(1 for line in lines if line.number not in done)
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("warming", total=left)
        try:
            report = asyncio.run(
                warm.warm(
                    url,
                    lines,
                    progress=progress_file,
                    done=done,
                    api_key=os.environ.get("GUARITA_API_KEY", "").strip() or None,
                    concurrency=concurrency,
                    attempts=attempts,
                    on_line=lambda _n, _o: bar.advance(task),
                )
            )
        except warm.Unauthorized as exc:
            err.print(f"[red]error:[/red] {exc} (set GUARITA_API_KEY to the key whose "
                      "namespace to warm)", highlight=False)  # fmt: skip
            raise typer.Exit(1) from None
        except warm.Unreachable as exc:
            err.print(f"[red]error:[/red] --url: cannot reach {url} ({exc}); the progress is "
                      f"kept in {progress_file}: run again to resume", highlight=False)  # fmt: skip
            raise typer.Exit(1) from None
    counts = report.outcomes
    out.print(
        f"{counts['stored']} stored, {counts['cached']} already cached, "
        f"{counts['uncached']} not cacheable, {counts['failed']} failed, "
        f"{report.skipped} done before (progress in {progress_file})",
        highlight=False,
    )
    if counts["uncached"]:
        err.print("[yellow]warning:[/yellow] some answers are not cached: the cache is off "
                  "for their model or agent, or their temperature is not cacheable",
                  highlight=False)  # fmt: skip
    for number, message in report.failures[:20]:
        err.print(f"line {number}: {message}", highlight=False, markup=False)
    if counts["failed"]:
        raise typer.Exit(1)


@economy_app.command("status")
def economy_status(url: UrlOption = "http://127.0.0.1:8080") -> None:
    """Budgets in economy mode, and lifted ones, as the server sees them."""
    print(orjson.dumps(_admin("GET", url, "/admin/economy"), option=orjson.OPT_INDENT_2).decode())


@economy_app.command("off")
def economy_off(
    budget: Annotated[str, typer.Option(help="key:<key id>, agent:<name> or total.")],
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Leave economy mode for a budget until the end of the UTC day: its calls are served as
    usual again and its budget only counts."""
    report = _admin("POST", url, "/admin/economy/off", {"budget": budget})
    out.print(f"economy mode lifted for {budget} until "
              f"{report['lifted'].get(budget, 0):.0f} (epoch s)", highlight=False)  # fmt: skip


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


@app.command()
def usage(
    since: Annotated[
        str | None,
        typer.Option(
            metavar="DATE",
            help="Start: a date (UTC) or an RFC 3339 date-time (default: --days before --until).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="DATE", help="End, exclusive; a date includes that day (default: now)."
        ),
    ] = None,
    days: Annotated[
        int | None, typer.Option(min=1, help="Days before --until, without --since (default: 30).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this key's calls (key_…).")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's calls.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Only calls this model answered (after fallbacks).")
    ] = None,
    by: Annotated[
        str, typer.Option(help="Group by some of key, agent, model, day (UTC).")
    ] = "key,agent,model,day",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per row, then the total.")
    ] = False,
) -> None:
    """Requests, errors, tokens and cost from the request records, grouped."""
    from guarita.store.database import Database

    def option(name: str, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=f"'--{name}'") from None

    start = option("since", lambda: parse_time(since)) if since is not None else None
    end = option("until", lambda: parse_time(until, end_of_day=True)) if until is not None else None
    if start is not None and days is not None:
        raise typer.BadParameter("give --since or --days, not both", param_hint="'--days'")
    if start is not None and end is not None and start > end:
        raise typer.BadParameter(f"{since} is after --until {until}", param_hint="'--since'")
    query = UsageQuery(
        since=start,
        until=end,
        days=days or DEFAULT_DAYS,
        key_id=key,
        agent=agent,
        model=model,
        by=option("by", lambda: parse_grouping(by.replace(" ", ""))),
    )

    async def go(settings: Settings) -> UsageReport:
        db = Database(settings.store_url)
        try:
            await db.migrate()
            return await usage_report(db, query)
        finally:
            await db.aclose()

    report = _run(go, _settings())
    if as_json:
        for row in report.rows:
            print(orjson.dumps(report.row_json(row)).decode())
        print(orjson.dumps({"total": report.total.to_json()}).decode())
    else:
        _print_usage(report)


def _print_usage(report: UsageReport) -> None:
    title = f"usage {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC"
    table = Table(*report.by, title=title)
    for column in ("requests", "errors", "input tokens", "output tokens", "cost"):
        table.add_column(column, justify="right")
    for row in report.rows:
        dimensions = [row.dimension(g) or "—" for g in report.by]
        table.add_row(*dimensions, *_usage_counts(row.counts))
    table.add_section()
    blanks = [""] * (len(report.by) - 1)
    table.add_row("total", *blanks, *_usage_counts(report.total), style="bold")
    Console(width=max(out.width, 120)).print(table)


def _usage_counts(counts: UsageCounts) -> list[str]:
    numbers = (counts.requests, counts.errors, counts.input_tokens, counts.output_tokens)
    return [*(f"{n:,}" for n in numbers), f"${counts.cost_usd:,.6f}"]


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # raised outside a command's own handling
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
