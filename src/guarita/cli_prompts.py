"""``guarita prompts``: push, list, show, diff and label prompt versions in the store (each
push and label move audited, and a move announced to every API process in scale-out mode).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from rich.table import Table

from guarita.cli_common import T, cli_settings, err, out, run_async
from guarita.errors import GuaritaError
from guarita.ops.prompts import PromptRegistry, announce_label_move
from guarita.settings import Settings
from guarita.telemetry.audit import cli_actor

prompts_app = typer.Typer(help="Versioned prompts and their labels.", no_args_is_help=True)

FILE_FIELDS = frozenset({"name", "template", "variables", "model", "author", "tags", "message"})


def _with_registry(action: Callable[[PromptRegistry], Coroutine[Any, Any, T]]) -> T:
    """Run ``action`` on the registry of the configured database (migrated first), its
    changes audited (actor ``cli:<os user>``); a refused change is shown
    as the API would word it and exits 1."""

    async def go(settings: Settings) -> T:
        from guarita.store.database import Database
        from guarita.store.prompts import PromptStore
        from guarita.telemetry.audit import AuditLog

        db = Database(settings.store_url)
        audit = AuditLog(db, spool_dir=settings.data_dir / "audit-spool",
                         dead_letter_dir=settings.data_dir / "dead-letter",
                         enabled=settings.audit.enabled)  # fmt: skip
        try:
            await db.migrate()
            return await action(PromptRegistry(PromptStore(db), models=settings.models,
                                               audit=audit.record))  # fmt: skip
        except GuaritaError as exc:
            err.print(f"[red]error:[/red] {exc.message}", highlight=False)
            raise typer.Exit(1) from None
        finally:
            await audit.aclose()
            await db.aclose()

    return run_async(go, cli_settings())


def _announce(settings: Settings, name: str, label: str) -> None:
    """Tell every API process at once (scale-out mode); without it they see the move within
    the registry's cache TTL (under 1 s)."""
    if not settings.redis_url:
        return
    from guarita.state.redis import RedisSharedState

    async def go(_settings: Settings) -> None:
        async with RedisSharedState.from_url(
            settings.redis_url or "", prefix=settings.redis_prefix, max_connections=2
        ) as state:
            await announce_label_move(state, name, label)

    try:
        run_async(go, settings)
    except Exception as exc:  # noqa: BLE001 - the processes see it within the TTL anyway
        err.print(f"[yellow]warning:[/yellow] could not announce the move on Redis "
                  f"({type(exc).__name__}); API processes use it within 1 s",
                  highlight=False)  # fmt: skip


def load_prompt_file(path: Path) -> dict[str, Any]:
    """A prompt file's fields (docs/prompts.md), checked for unknown ones."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="FILE") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: not a mapping of prompt fields", param_hint="FILE")
    unknown = sorted(set(data) - FILE_FIELDS)
    if unknown or "name" not in data or "template" not in data:
        raise typer.BadParameter(
            f"{path}: needs name and template; unknown field(s): {', '.join(unknown) or 'none'}"
            f" (known: {', '.join(sorted(FILE_FIELDS))})",
            param_hint="FILE",
        )
    return data


@prompts_app.command("push")
def prompts_push(
    file: Annotated[
        Path, typer.Argument(help="A prompt file (YAML).", exists=True, dir_okay=False)
    ],
    label: Annotated[str | None, typer.Option(help="Then point this label at it.")] = None,
) -> None:
    """Push a prompt file as a new version (none if its content equals the newest)."""
    data = load_prompt_file(file)
    settings = cli_settings()
    tags = data.get("tags") or []

    async def push(registry: PromptRegistry) -> tuple[Any, bool, Any]:
        version, created = await registry.push(
            data["name"], data["template"], variables=data.get("variables"),
            model=data.get("model"), author=data.get("author"),
            tags=[str(t) for t in tags] if isinstance(tags, list) else [str(tags)],
            message=data.get("message"), actor=cli_actor(),
        )  # fmt: skip
        moved = None
        if label is not None:
            moved = await registry.move_label(
                version.name, label, version.version, actor=cli_actor()
            )
        return version, created, moved

    version, created, moved = _with_registry(push)
    what = "pushed" if created else "unchanged, the newest version is"
    out.print(f"{what} {version.ref} (sha256 {version.sha256[:12]})", highlight=False)
    if moved is not None:
        _announce(settings, version.name, moved.label)
        out.print(f"label {moved.label} -> {version.version}", highlight=False)


@prompts_app.command("list")
def prompts_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per prompt.")] = False,
) -> None:
    """Every prompt, its newest version and its labels."""
    summaries = _with_registry(lambda registry: registry.list())
    if as_json:
        for s in summaries:
            print(orjson.dumps({"name": s.name, "latest": s.latest, "labels": s.labels,
                                "created_at": s.created_at.isoformat()}).decode())  # fmt: skip
        return
    table = Table("name", "latest", "labels", "created")
    for s in summaries:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "-"
        table.add_row(s.name, str(s.latest), labels, s.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@prompts_app.command("show")
def prompts_show(
    ref: Annotated[str, typer.Argument(help="NAME (its newest), NAME@LABEL or NAME@VERSION.")],
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
) -> None:
    """One version: its template, variables, model config and metadata, and the labels."""
    version, labels = _with_registry(lambda registry: registry.show(ref))
    body = {**version.to_json(), "labels": {i.label: i.version for i in labels}}
    if as_json:
        print(orjson.dumps(body).decode())
        return
    print(yaml.safe_dump(body, sort_keys=False, allow_unicode=True), end="")


@prompts_app.command("diff")
def prompts_diff(
    name: Annotated[str, typer.Argument(help="The prompt.")],
    a: Annotated[int, typer.Argument(help="The older version.", min=1)],
    b: Annotated[int, typer.Argument(help="The newer version.", min=1)],
) -> None:
    """A unified diff of two versions' templates and model configs."""
    print(_with_registry(lambda registry: registry.diff(name, a, b)), end="")


@prompts_app.command("label")
def prompts_label(
    name: Annotated[str, typer.Argument(help="The prompt.")],
    version: Annotated[int, typer.Argument(help="The version to point at.", min=1)],
    label: Annotated[str, typer.Argument(help="production, staging, ...")],
    expect_version: Annotated[
        int | None,
        typer.Option(
            "--expect-version",
            min=0,
            help="Move only if the label points at this version now (0: new label).",
        ),
    ] = None,
) -> None:
    """Point a label at a version (compare-and-swap); every API process uses it within 1 s."""
    settings = cli_settings()
    info = _with_registry(
        lambda registry: registry.move_label(
            name, label, version, expected=expect_version, actor=cli_actor()
        )
    )
    _announce(settings, name, label)
    out.print(f"{name}@{label} -> {info.version} (revision {info.revision})", highlight=False)
