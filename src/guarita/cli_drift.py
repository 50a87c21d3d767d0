"""``guarita drift``: the drift report of each watched agent, and fixing a baseline by hand
(docs/observability.md)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
import typer
from rich.table import Table

from guarita.cli_common import T, audit_entry, cli_settings, err, out, run_async
from guarita.settings import Settings
from guarita.store.drift import DriftStore
from guarita.telemetry.audit import cli_actor

drift_app = typer.Typer(help="Behavioural drift: reports and baselines.", no_args_is_help=True)
Kind = Literal["output", "input", "both"]


def _with_store(action: Callable[[DriftStore, Settings], Coroutine[Any, Any, T]]) -> T:
    async def go(settings: Settings) -> T:
        from guarita.store.database import Database

        db = Database(settings.store_url)
        try:
            await db.migrate()
            return await action(DriftStore(db), settings)
        finally:
            await db.aclose()

    return run_async(go, cli_settings())


def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "an ISO 8601 time, e.g. 2025-01-31T12:00", param_hint=option
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _watched(settings: Settings) -> list[str]:
    s = settings.drift
    if not s.enabled:
        return []
    return list(s.agents) if s.agents is not None else list(settings.agents)


@drift_app.command("report")
def drift_report(
    agent: Annotated[str | None, typer.Option(help="One agent only.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Per agent and kind: the latest evaluation (level, score, p-values) and the baseline."""
    from guarita.ops.drift_service import drift_report as report

    rows = _with_store(lambda store, settings: report(store, _watched(settings), agent))
    if as_json:
        for row in rows:
            print(orjson.dumps(row).decode())
        return
    table = Table("agent", "kind", "samples", "level", "score", "mmd p", "clf p", "evaluated",
                  "baseline")  # fmt: skip
    for row in rows:
        latest, baseline = row["latest"], row["baseline"]
        r = latest["report"] if latest else {}
        table.add_row(
            row["agent"], row["kind"], str(row["samples"]),
            latest["level"] if latest else "-", f"{latest['score']:.3f}" if latest else "-",
            f"{r['mmd_p']:.3f}" if latest else "-", f"{r['classifier_p']:.3f}" if latest else "-",
            latest["created_at"][:19] if latest else "-",
            f"{baseline['starts_at'][:19]} .. {baseline['ends_at'][:19]} ({baseline['set_by']})"
            if baseline else "none yet",
        )  # fmt: skip
    out.print(table)


@drift_app.command("baseline")
def drift_baseline(
    agent: Annotated[str, typer.Option(help="The agent.")],
    from_: Annotated[str | None, typer.Option("--from", help="ISO time (UTC if no zone).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="ISO time (UTC if no zone).")] = None,
    kind: Annotated[Kind, typer.Option(help="output, input or both.")] = "both",
) -> None:
    """Fix the agent's baseline: its samples between --from and --to, or else its newest
    window. Later evaluations compare with it; audited as ``drift.baseline_set``."""
    from guarita.ops.drift_service import fix_baseline

    since, until = _moment(from_, "--from"), _moment(to, "--to")
    kinds = ("output", "input") if kind == "both" else (kind,)
    actor = cli_actor()

    async def go(store: DriftStore, settings: Settings) -> list[Any]:
        done = []
        for k in kinds:
            try:
                baseline = await fix_baseline(
                    store, agent, k, since=since, until=until,
                    window=settings.drift.window, set_by=actor,
                )  # fmt: skip
            except ValueError as exc:
                err.print(f"[yellow]{k}:[/yellow] {exc}", highlight=False)
                continue
            facts = ("drift.baseline_set", f"agent:{agent}", "success", baseline.to_json())
            await audit_entry(settings, store.db, "change", facts)
            done.append(baseline)
        return done

    done = _with_store(go)
    for b in done:
        out.print(f"{agent} {b.kind}: baseline {b.starts_at.isoformat()} .. "
                  f"{b.ends_at.isoformat()}", highlight=False)  # fmt: skip
    if not done:
        raise typer.Exit(1)
