"""What the CLI's command groups share: its consoles, settings and event loop with errors
shown as a user expects, option parsing, and the audit entries its commands write."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from guarita.errors import ConfigError
from guarita.settings import Settings, load_settings

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def cli_settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def run_async(factory: Callable[[Settings], Coroutine[Any, Any, T]], settings: Settings) -> T:
    try:
        return asyncio.run(factory(settings))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


AuditFacts = tuple[str, str | None, str, dict[str, Any] | None]
"""An audited change: action, target, outcome, details."""


async def audit_entry(settings: Settings, db: Any, category: str, facts: AuditFacts) -> None:
    """One audit entry by this command (actor ``cli:<os user>``), written before it exits;
    spooled for the server to write if the store cannot take it now."""
    from guarita.telemetry.audit import AuditLog, cli_actor

    log = AuditLog(
        db,
        spool_dir=settings.data_dir / "audit-spool",
        dead_letter_dir=settings.data_dir / "dead-letter",
        enabled=settings.audit.enabled,
    )
    action, target, outcome, details = facts
    log.record(category, action, cli_actor(), target, outcome, details=details)
    await log.aclose()


def parse_option(name: str, parse: Callable[[], T]) -> T:
    """``parse()``, its ValueError shown as a bad ``--name``."""
    try:
        return parse()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'--{name}'") from None


UrlOption = Annotated[
    str, typer.Option("--url", help="The running server [default: http://127.0.0.1:8080].")
]


def admin_call(method: str, url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call an /admin endpoint of a running server with the API key or JWT in
    GUARITA_ADMIN_KEY (reading needs the role viewer, operator or admin; changing, operator
    or admin)."""
    import httpx

    key = os.environ.get("GUARITA_ADMIN_KEY", "").strip()
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, url.rstrip("/") + path, json=body, headers=headers,
                                 timeout=10)  # fmt: skip
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] --url: cannot reach {url} ({exc})", highlight=False)
        raise typer.Exit(1) from None
    if not 200 <= response.status_code < 300:
        message = response.json().get("error", {}).get("message", response.text)
        hint = ""
        if response.status_code == 401:
            hint = (" (set GUARITA_ADMIN_KEY to an API key or a JWT with the role needed)"
                    if not key else " (GUARITA_ADMIN_KEY was refused)")  # fmt: skip
        elif response.status_code == 403:
            hint = (" (GUARITA_ADMIN_KEY lacks that role: give a key one with `guarita keys "
                    "update KEY_ID --role operator`, or use a token that carries it)")  # fmt: skip
        err.print(f"[red]error:[/red] {message}{hint}", highlight=False)
        raise typer.Exit(1)
    return response.json()
