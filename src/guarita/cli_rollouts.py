"""``guarita rollout``: start, watch and move rollouts on a running server (its
``/admin/rollouts``), with the key or JWT in GUARITA_ADMIN_KEY: reading needs the role
viewer, operator or admin; starting and moving, operator or admin."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from guarita.cli_common import UrlOption, admin_call, err, out

rollout_app = typer.Typer(help="Canary and shadow rollouts of prompts and models.",
                          no_args_is_help=True)  # fmt: skip

DEFAULT_URL = "http://127.0.0.1:8080"
IdArgument = Annotated[str, typer.Argument(help="The rollout's id (ro_...).")]
JsonOption = Annotated[bool, typer.Option("--json", help="As JSON.")]


def _print_json(body: Any) -> None:
    print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


def _summary(rollout: dict[str, Any]) -> str:
    candidate = " + ".join(
        c for c in (rollout["candidate_prompt"], rollout["candidate_model"]) if c
    )
    last = rollout.get("last_decision") or {}
    why = f" ({last['action']}: {'; '.join(last.get('reasons', [])[:2])})" if last else ""
    return (f"{rollout['id']} {rollout['agent']}: {candidate} {rollout['state']} at "
            f"{rollout['percent']}%{why}")  # fmt: skip


@rollout_app.command("start")
def rollout_start(
    agent: Annotated[str, typer.Option(help="The agent to roll the candidate out to.")],
    change_type: Annotated[
        str, typer.Option(help="new_model, prompt_update, config_change, security_hotfix...")
    ],
    candidate_prompt: Annotated[
        str | None, typer.Option(help="NAME@VERSION of the agent's prompt.")
    ] = None,
    candidate_model: Annotated[str | None, typer.Option(help="A configured model.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Start a rollout by the change type's plan (stages, approval, rollback rule)."""
    if candidate_prompt is None and candidate_model is None:
        err.print("[red]error:[/red] give --candidate-prompt NAME@VERSION and/or "
                  "--candidate-model MODEL", highlight=False)  # fmt: skip
        raise typer.Exit(2)
    body = {"agent": agent, "change_type": change_type, "candidate_prompt": candidate_prompt,
            "candidate_model": candidate_model}  # fmt: skip
    rollout = admin_call("POST", url, "/admin/rollouts", body)
    if as_json:
        _print_json(rollout)
        return
    out.print(f"started {_summary(rollout)}", highlight=False)


@rollout_app.command("status")
def rollout_status(
    rollout_id: Annotated[
        str | None, typer.Argument(help="One rollout; absent: the newest ones.")
    ] = None,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """One rollout's state, stage and last decision, or a table of the newest ones."""
    if rollout_id is not None:
        rollout = admin_call("GET", url, f"/admin/rollouts/{rollout_id}")
        if as_json:
            _print_json(rollout)
        else:
            out.print(_summary(rollout), highlight=False)
        return
    rollouts = admin_call("GET", url, "/admin/rollouts")
    if as_json:
        _print_json(rollouts)
        return
    table = Table("id", "agent", "candidate", "change type", "state", "percent", "updated")
    for r in rollouts:
        candidate = " + ".join(c for c in (r["candidate_prompt"], r["candidate_model"]) if c)
        table.add_row(r["id"], r["agent"], candidate, r["change_type"], r["state"],
                      f"{r['percent']}%", r["updated_at"][:19])  # fmt: skip
    out.print(table)


def _mover(verb: str, doc: str) -> None:
    def move(rollout_id: IdArgument, url: UrlOption = DEFAULT_URL) -> None:
        rollout = admin_call("POST", url, f"/admin/rollouts/{rollout_id}/{verb}")
        out.print(_summary(rollout), highlight=False)

    move.__doc__ = doc
    rollout_app.command(verb)(move)


_mover("pause", "Stop deciding; the traffic stays where it is.")
_mover("resume", "Go on deciding after a pause.")
_mover("abort", "Send all traffic back to the stable version, for good.")
_mover("approve", "Take the promotion a plan's human approval held.")


@rollout_app.command("report")
def rollout_report(rollout_id: IdArgument, url: UrlOption = DEFAULT_URL) -> None:
    """Every decision, per-stage figures, the current stage's decision and the shadow
    verdict, as JSON."""
    _print_json(admin_call("GET", url, f"/admin/rollouts/{rollout_id}/report"))
