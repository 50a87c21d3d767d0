"""``guarita keys``: create, update, list and revoke API keys in the store (each change
audited, and announced to every API process in scale-out mode)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from guarita.cli_common import AuditFacts, T, audit_entry, cli_settings, err, out, run_async
from guarita.settings import ROLES, Settings, TierLimits
from guarita.store.keys import KeyStore

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _with_keys(
    action: Callable[[KeyStore], Coroutine[Any, Any, T]],
    *,
    changes: str | None = None,
    audit: Callable[[T], AuditFacts] | None = None,
) -> T:
    """Run ``action`` on the key store of the configured database (migrated first), and
    record the ``audit`` entry it makes of the result. When it ``changes`` a key and
    succeeds, announce it on the shared state (scale-out mode), so every API process drops
    the key from its cache at once (else within ``auth.revocation_check_s``, when it sees
    the store change)."""

    async def go(settings: Settings) -> T:
        from guarita.store.database import Database

        db = Database(settings.store_url)
        try:
            await db.migrate()
            result = await action(KeyStore(db))
            if audit is not None:
                await audit_entry(settings, db, "change", audit(result))
        finally:
            await db.aclose()
        if changes is not None and result and settings.redis_url:
            await _announce_key_change(settings, changes)
        return result

    return run_async(go, cli_settings())


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


RoleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--role",
        help=f"A role of the key, repeatable: {', '.join(ROLES)} [default: its tier's, "
        "auth.tier_roles].",
    ),
]
ExpiresInOption = Annotated[
    str | None,
    typer.Option("--expires-in", metavar="DURATION", help="It expires after this: 30d, 12h, 90m."),
]
ExpiresAtOption = Annotated[
    str | None,
    typer.Option("--expires-at", metavar="TIME", help="It expires then: ISO 8601 (UTC if no TZ)."),
]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _roles(roles: list[str] | None) -> tuple[str, ...] | None:
    if roles is None:
        return None
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        err.print(f"[red]error:[/red] --role: unknown role {unknown[0]!r} (known: "
                  f"{', '.join(ROLES)})", highlight=False)  # fmt: skip
        raise typer.Exit(2)
    return tuple(dict.fromkeys(roles))


def _expiry(expires_in: str | None, expires_at: str | None) -> datetime | None:
    """When a key given ``--expires-in`` or ``--expires-at`` expires (None: neither given)."""
    if expires_in is not None and expires_at is not None:
        raise typer.BadParameter("give --expires-in or --expires-at, not both",
                                 param_hint="'--expires-at'")  # fmt: skip
    now = datetime.now(UTC)
    if expires_in is not None:
        match = _DURATION.match(expires_in)
        if match is None or float(match.group(1)) <= 0:
            raise typer.BadParameter(f"{expires_in!r} is not a duration such as 30d, 12h, 90m, "
                                     "45s, 2w", param_hint="'--expires-in'")  # fmt: skip
        return now + timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    if expires_at is not None:
        try:
            moment = datetime.fromisoformat(expires_at)
        except ValueError:
            raise typer.BadParameter(f"{expires_at!r} is not an ISO 8601 time",
                                     param_hint="'--expires-at'") from None  # fmt: skip
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        if moment <= now:
            raise typer.BadParameter(f"{expires_at} is in the past", param_hint="'--expires-at'")
        return moment.astimezone(UTC)
    return None


def _describe(roles: tuple[str, ...] | None, expires_at: datetime | None, tier: str) -> str:
    who = ", ".join(roles) if roles is not None else f"those of tier {tier}"
    until = f"expires {expires_at:%Y-%m-%d %H:%M:%S} UTC" if expires_at else "no expiry"
    return f"roles {who or 'none'}, {until}"


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
    role: RoleOption = None,
    expires_in: ExpiresInOption = None,
    expires_at: ExpiresAtOption = None,
) -> None:
    """Create a key; its own limits (if any) override its tier's, its own roles (if any)
    replace its tier's. Its secret is printed once; only a hash is stored."""
    settings = cli_settings()
    _known_tier(settings, tier)
    roles = _roles(role)
    expiry = _expiry(expires_in, expires_at)
    limits = _key_limits(settings, rpm=rpm, rpd=rpd, tpm=tpm, concurrency=concurrency,
                         max_tokens=max_tokens, models=models, daily_budget=daily_budget_usd,
                         monthly_budget=monthly_budget_usd)  # fmt: skip
    own = limits.model_dump(exclude_unset=True) if limits else None
    facts = {"tier": tier, "limits": own, "roles": sorted(roles) if roles else None,
             "expires_at": expiry.isoformat() if expiry else None}  # fmt: skip
    secret, info = _with_keys(
        lambda keys: keys.create(name, tier, limits, roles=roles, expires_at=expiry),
        audit=lambda made: ("key.created", made[1].id, "success", facts),
    )
    err.print(
        f"created key {info.id} (name {name!r}, tier {tier}, "
        f"{_describe(info.roles, info.expires_at, tier)}); "
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
    role: RoleOption = None,
    tier_roles: Annotated[
        bool, typer.Option("--tier-roles", help="Drop the key's own roles: its tier's apply.")
    ] = False,
    expires_in: ExpiresInOption = None,
    expires_at: ExpiresAtOption = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="It never expires.")] = False,
) -> None:
    """Change a key's tier, its own limits, its roles or its expiry; every API process
    applies it within `auth.revocation_check_s`."""
    settings = cli_settings()
    if tier is not None:
        _known_tier(settings, tier)
    roles = _roles(role)
    if roles is not None and tier_roles:
        raise typer.BadParameter("give --role or --tier-roles, not both", param_hint="'--role'")
    expiry = _expiry(expires_in, expires_at)
    if expiry is not None and no_expiry:
        raise typer.BadParameter("--no-expiry with an expiry", param_hint="'--no-expiry'")
    limits = _key_limits(settings, rpm=rpm, rpd=rpd, tpm=tpm, concurrency=concurrency,
                         max_tokens=max_tokens, models=models, daily_budget=daily_budget_usd,
                         monthly_budget=monthly_budget_usd)  # fmt: skip
    changes: dict[str, Any] = dict(
        tier=tier, limits=limits, replace_limits=reset_limits, roles=roles,
        reset_roles=tier_roles, expires_at=expiry, no_expiry=no_expiry,
    )  # fmt: skip
    changed = {
        "tier": tier,
        "limits": limits.model_dump(exclude_unset=True) if limits else None,
        "reset_limits": reset_limits,
        "roles": sorted(roles) if roles else None,
        "reset_roles": tier_roles,
        "expires_at": expiry.isoformat() if expiry else None,
        "no_expiry": no_expiry,
    }
    info = _with_keys(
        lambda keys: keys.update(key_id, **changes),
        changes=key_id,
        audit=lambda done: (
            "key.updated", key_id, "success" if done else "failure",
            changed if done else {**changed, "reason": "no_active_key"},
        ),
    )  # fmt: skip
    if info is None:
        err.print(f"[red]error:[/red] no active key {key_id}", highlight=False)
        raise typer.Exit(1)
    own = info.limits.model_dump(exclude_unset=True) if info.limits else {}
    out.print(f"updated {key_id}: tier {info.tier}, own limits {own or 'none'}, "
              f"{_describe(info.roles, info.expires_at, info.tier)}", highlight=False)  # fmt: skip


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
    table = Table("id", "name", "tier", "roles", "own limits", "prefix", "created", "expires",
                  "revoked")  # fmt: skip
    tier_roles = cli_settings().auth
    now = datetime.now(UTC)
    for info in keys:
        revoked = f"{info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else ""
        created = f"{info.created_at:%Y-%m-%d %H:%M}"
        expires = f"{info.expires_at:%Y-%m-%d %H:%M}" if info.expires_at else "never"
        if info.expired(now):
            expires += " (expired)"
        own = info.limits.model_dump(exclude_unset=True) if info.limits else {}
        limits = ", ".join(f"{k}={v}" for k, v in own.items())
        roles = (
            ", ".join(info.roles)
            if info.roles is not None
            else ", ".join(sorted(tier_roles.roles_of_tier(info.tier))) + " (tier)"
        )
        table.add_row(info.id, info.name, info.tier, roles, limits, info.prefix + "…", created,
                      expires, revoked)  # fmt: skip
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
    revoked = _with_keys(
        lambda keys: keys.revoke(key_id),
        changes=key_id,
        audit=lambda done: (
            "key.revoked", key_id, "success" if done else "failure",
            None if done else {"reason": "no_active_key"},
        ),
    )  # fmt: skip
    if not revoked:
        err.print(f"[red]error:[/red] no active key {key_id}", highlight=False)
        raise typer.Exit(1)
    out.print(f"revoked {key_id}")
