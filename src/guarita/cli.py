"""The ``guarita`` command: serve, keys, cost, usage, audit, migrate."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from guarita.cli_common import (
    UrlOption,
    admin_call,
    audit_entry,
    cli_settings,
    err,
    out,
    parse_option,
    run_async,
)
from guarita.cli_drift import drift_app
from guarita.cli_keys import keys_app
from guarita.cli_prompts import prompts_app
from guarita.cli_rollouts import rollout_app
from guarita.cli_slo import slo_app
from guarita.errors import ConfigError
from guarita.settings import Settings
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
cost_app = typer.Typer(help="Cost estimates.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
economy_app = typer.Typer(
    help="Economy mode of used-up budgets (on a running server).", no_args_is_help=True
)
app.add_typer(cost_app, name="cost")
app.add_typer(economy_app, name="economy")
audit_app = typer.Typer(
    help="The audit log in the store: verify its chain, list its entries.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
cache_app = typer.Typer(
    help="The response cache of a running server (GUARITA_ADMIN_KEY: a key or JWT with the "
    "role viewer to read, operator to change, or admin).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")
app.add_typer(prompts_app, name="prompts")
app.add_typer(rollout_app, name="rollout")
app.add_typer(slo_app, name="slo")
app.add_typer(drift_app, name="drift")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8080].")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes sharing the port.")] = 1,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="Serve HTTPS with this PEM certificate (chain).")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option(help="Its PEM private key [default: inside the certificate].")
    ] = None,
) -> None:
    """Serve the HTTP API (embedded default: SQLite and the local model)."""
    import uvicorn

    from guarita.api.http_limits import HeaderLimits, header_limited_protocol
    from guarita.api.security_headers import NO_STORE, SecurityHeaders
    from guarita.api.tls import uvicorn_tls_options
    from guarita.app import create_app
    from guarita.runtime import Runtime
    from guarita.telemetry.logging import configure_logging

    if host is not None:
        os.environ["GUARITA_SERVER__HOST"] = host
    if port is not None:
        os.environ["GUARITA_SERVER__PORT"] = str(port)
    if ssl_certfile is not None:  # through the environment: it reaches --workers processes too
        os.environ["GUARITA_SERVER__SSL_CERTFILE"] = str(ssl_certfile)
    if ssl_keyfile is not None:
        os.environ["GUARITA_SERVER__SSL_KEYFILE"] = str(ssl_keyfile)
    settings = cli_settings()
    configure_logging(settings.server.log_level)
    try:
        tls = uvicorn_tls_options(settings.server)  # a missing file stops here, named
        runtime = Runtime(settings)  # validates providers and keys before anything listens
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    scheme = "https" if tls else "http"
    where = f"{scheme}://{settings.server.host}:{settings.server.port}"
    err.print(
        f"Guarita serving on {where} ({workers} process{'es' if workers > 1 else ''})",
        highlight=False,
    )
    refusal_headers = (*SecurityHeaders.from_settings(settings.server).api, NO_STORE)
    limits = HeaderLimits(
        settings.server.max_header_bytes, settings.server.header_timeout_s, refusal_headers
    )
    options: dict[str, Any] = dict(
        host=settings.server.host, port=settings.server.port, access_log=False, log_level="warning",
        timeout_graceful_shutdown=30,
        http=header_limited_protocol(limits),  # uvicorn bounds neither the head's size nor time
        **tls,
    )  # fmt: skip
    if workers == 1:
        uvicorn.run(create_app(settings, runtime=runtime), **options)
        return
    with tempfile.TemporaryDirectory(prefix="guarita-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(
            "guarita.app:app_from_environment", factory=True, workers=workers,
            timeout_worker_healthcheck=settings.server.worker_healthcheck_s, **options,
        )  # fmt: skip


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

    settings = cli_settings()
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

    run_async(go, cli_settings())
    out.print("store schema is up to date")


@cache_app.command("stats")
def cache_stats(url: UrlOption = "http://127.0.0.1:8080") -> None:
    """The cache's entries, and the answering process's lookups, hit ratio and saving."""
    print(orjson.dumps(admin_call("GET", url, "/admin/cache"), option=orjson.OPT_INDENT_2).decode())


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
    cleared = admin_call("POST", url, "/admin/cache/clear", body)["cleared"]
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
    print(
        orjson.dumps(admin_call("GET", url, "/admin/economy"), option=orjson.OPT_INDENT_2).decode()
    )


@economy_app.command("off")
def economy_off(
    budget: Annotated[str, typer.Option(help="key:<key id>, agent:<name> or total.")],
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Leave economy mode for a budget until the end of the UTC day: its calls are served as
    usual again and its budget only counts."""
    report = admin_call("POST", url, "/admin/economy/off", {"budget": budget})
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
    settings = cli_settings()
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

    start = parse_option("since", lambda: parse_time(since)) if since is not None else None
    end = None
    if until is not None:
        end = parse_option("until", lambda: parse_time(until, end_of_day=True))
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
        by=parse_option("by", lambda: parse_grouping(by.replace(" ", ""))),
    )

    filters = {"since": since, "until": until, "days": days, "key_id": key, "agent": agent,
               "model": model, "by": by}  # fmt: skip

    async def go(settings: Settings) -> UsageReport:
        db = Database(settings.store_url)
        try:
            await db.migrate()
            report = await usage_report(db, query)
            given = {k: v for k, v in filters.items() if v is not None}
            await audit_entry(settings, db, "data", ("data.read", "requests", "success",
                                                {"filters": given}))  # fmt: skip
            return report
        finally:
            await db.aclose()

    report = run_async(go, cli_settings())
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


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the audit chain: exit 0 with "ok: N entries", or 1 naming the first broken seq
    (an edited, deleted, inserted or moved row) and why."""
    from guarita.store.audit import AuditChain, Verification
    from guarita.store.database import Database

    async def go(settings: Settings) -> Verification:
        db = Database(settings.store_url)
        try:
            await db.migrate()
            return await AuditChain(db).verify()
        finally:
            await db.aclose()

    result = run_async(go, cli_settings())
    if not result.ok:
        err.print(f"[red]error:[/red] audit chain {result.message()}", highlight=False,
                  markup=False)  # fmt: skip
        raise typer.Exit(1)
    out.print(result.message(), highlight=False)


@audit_app.command("list")
def audit_list(
    actor: Annotated[
        str | None, typer.Option(help="Only this actor (a key id, cli:<user>).")
    ] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (auth.failed, …).")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    category: Annotated[str | None, typer.Option(help="access, data or change.")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, denied or failure.")] = None,
    since: Annotated[
        str | None, typer.Option(metavar="DATE", help="Start: a date (UTC) or a date-time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="DATE", help="End, exclusive; a date includes that day.")
    ] = None,
    after: Annotated[int | None, typer.Option(min=0, help="Entries after this seq.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry.")] = False,
) -> None:
    """Audit entries from the store, oldest first (reading them is audited too)."""
    from guarita.store.audit import CATEGORIES, OUTCOMES, AuditChain, AuditQuery
    from guarita.store.database import Database

    if category is not None and category not in CATEGORIES:
        raise typer.BadParameter(f"one of {', '.join(CATEGORIES)}", param_hint="'--category'")
    if outcome is not None and outcome not in OUTCOMES:
        raise typer.BadParameter(f"one of {', '.join(OUTCOMES)}", param_hint="'--outcome'")
    query = AuditQuery(
        actor=actor, action=action, target=target, category=category, outcome=outcome,
        since=parse_option("since", lambda: parse_time(since)) if since is not None else None,
        until=parse_option("until", lambda: parse_time(until, end_of_day=True)) if until else None,
        after=after, limit=limit,
    )  # fmt: skip
    given = {k: v for k, v in dataclasses.asdict(query).items() if v is not None}
    given.pop("limit", None)

    async def go(settings: Settings) -> tuple[list[dict[str, Any]], bool]:
        db = Database(settings.store_url)
        try:
            await db.migrate()
            page = await AuditChain(db).list(query)
            await audit_entry(settings, db, "data", ("data.read", "audit_log", "success",
                                                {"filters": given}))  # fmt: skip
            return page
        finally:
            await db.aclose()

    entries, more = run_async(go, cli_settings())
    if as_json:
        for entry in entries:
            print(orjson.dumps(entry).decode())
        return
    table = Table("seq", "time (UTC)", "category", "action", "actor", "target", "outcome")
    for e in entries:
        table.add_row(str(e["seq"]), e["created_at"][:19].replace("T", " "), e["category"],
                      e["action"], e["actor"], e["target"] or "", e["outcome"])  # fmt: skip
    Console(width=max(out.width, 140)).print(table)
    if more:
        err.print(f"more entries follow: --after {entries[-1]['seq']}", highlight=False)


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # raised outside a command's own handling
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
