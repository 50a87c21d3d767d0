"""``guarita slo``: the error budgets of the configured store (``status``), and the
Prometheus burn-rate rules of the configured SLOs (``rules``); docs/slo.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from guarita.cli_common import cli_settings, err, out, run_async
from guarita.ops.slo import SloStatus
from guarita.settings import Settings

slo_app = typer.Typer(help="Error budgets, burn rates and the deploy freeze.", no_args_is_help=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@slo_app.command("status")
def slo_status(
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, as GET /admin/slo.")] = False,
) -> None:
    """Each agent's SLOs now: good/total over the period, budget left, burn rate per window,
    time to exhaustion, alert and freeze state (read from the store; nothing moves)."""
    settings = cli_settings()
    if agent is not None and agent not in settings.agents:
        err.print(f"[red]error:[/red] no agent named {agent!r}", highlight=False)
        raise typer.Exit(1)

    async def go(s: Settings) -> list[SloStatus]:
        from guarita.ops.slo_service import SloEvaluator
        from guarita.store.database import Database
        from guarita.store.slo import SloStates

        db = Database(s.store_url)
        try:
            await db.migrate()
            statuses = await SloEvaluator(s, db).evaluate(agent)
            stored = await SloStates(db).all(agent)
        finally:
            await db.aclose()
        for st in statuses:
            record = stored.get((st.agent, st.slo))
            st.frozen = s.slo.freeze.enabled and record is not None and record.state == "exhausted"
        return statuses

    statuses = run_async(go, settings)
    if as_json:
        out.print_json(orjson.dumps([st.as_dict() for st in statuses]).decode())
        return
    windows = sorted({w for st in statuses for w in st.burn_rates}, key=_seconds)
    table = Table()
    burn = f"burn rate {' '.join(windows)}"
    for column in ("agent", "slo", "target", "good/total", "left", burn, "exhausted in",
                   "alert", "budget"):  # fmt: skip
        table.add_column(column, overflow="fold")  # folded, never cut, in a narrow terminal
    for st in statuses:
        burns = " ".join(_rate(st.burn_rates.get(w)) for w in windows)
        budget = f"{st.budget} (frozen)" if st.frozen else st.budget
        table.add_row(st.agent, st.slo, f"{st.target:g}", f"{st.good}/{st.total}",
                      f"{st.remaining:.1%}", burns, _duration(st.time_to_exhaustion_s), st.alert,
                      budget)  # fmt: skip
    out.print(table)


def _seconds(window: str) -> int:
    from guarita.settings_slo import duration_s

    return duration_s(window)


@slo_app.command("rules")
def slo_rules(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")
    ] = None,
) -> None:
    """Prometheus recording and alert rules (multiwindow, multi-burn-rate) for the SLOs of
    the configuration: ``promtool check rules`` accepts them."""
    from guarita.ops.slo_rules import render

    text = render(cli_settings())
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}", highlight=False)
