"""What the CLI's command groups share: its consoles, settings and event loop with errors
shown as a user expects, option parsing, and the audit entries its commands write."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

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
