"""Operator endpoints: what the resilience layer is doing right now, and usage so far.

They need a key of tier ``admin`` (``guarita keys create --name ops --tier admin``), or
auth switched off for local development.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Query
from pydantic.json_schema import SkipJsonSchema
from starlette.responses import Response

from guarita.api.deps import CallerDep, RuntimeDep
from guarita.api.openapi import SECURED, errors, ok
from guarita.api.schemas import (
    BreakerReport,
    CacheClear,
    CacheCleared,
    CacheReport,
    EconomyLift,
    EconomyReport,
    UsageReport,
)
from guarita.errors import InvalidRequest, PermissionDenied
from guarita.store.usage import (
    GROUPINGS,
    Grouping,
    UsageQuery,
    parse_grouping,
    parse_time,
    usage_report,
)
from guarita.types import Caller

log = structlog.get_logger("guarita.admin")
router = APIRouter(prefix="/admin", tags=["admin"])
ADMIN_TIER = "admin"


_ADMIN_ONLY = {403: "The key is not of tier `admin`"}


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def require_admin(caller: Caller) -> None:
    # "local" is the anonymous caller of auth-off or localhost development mode
    if caller.tier not in (ADMIN_TIER, Caller.anonymous().tier):
        raise PermissionDenied(f"this endpoint needs a key of tier '{ADMIN_TIER}'")


@router.get(
    "/breakers",
    operation_id="listBreakers",
    response_model=None,
    responses={
        200: ok(BreakerReport, "Every model's deployments, their breakers and load"),
        **errors(401, 403, described=_ADMIN_ONLY),
    },
    openapi_extra=SECURED,
)
async def breakers(runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Every deployment's breaker (state, counters), load and retry budget."""
    require_admin(caller)
    states = await runtime.breakers.snapshot(
        d.name for g in runtime.models.values() for d in g.deployments if d.breaker
    )
    models: dict[str, Any] = {}
    for name, group in runtime.models.items():
        models[name] = {
            "balancing": group.settings.balancing,
            "fallbacks": group.settings.fallbacks,
            "deployments": [
                {
                    "name": d.name,
                    "provider": d.provider.name,
                    "weight": d.weight,
                    "outstanding": d.outstanding,
                    "retries_refused_by_budget": d.budget.refused,
                    "breaker": asdict(states[d.name]) if d.breaker else None,
                }
                for d in group.deployments
            ],
        }
    return _json({"models": models})


# what parse_time and parse_grouping take, for the schema (schemathesis holds us to it)
_TIME = {"anyOf": [{"format": "date"}, {"format": "date-time"}]}
_NAME = "|".join(GROUPINGS)
_BY = {"pattern": f"^({_NAME})(,({_NAME}))*$"}
TextParam = str | SkipJsonSchema[None]
"""An optional text parameter: None when absent, and no ``null`` in the schema."""


@router.get(
    "/usage",
    operation_id="usageReport",
    response_model=None,
    responses={
        200: ok(UsageReport, "Requests, errors, tokens and cost per group, and their total"),
        **errors(
            400,
            401,
            403,
            described={
                400: "A malformed `since` or `until`, an unknown `by` field, "
                "a `limit` out of range",
                403: "The key is not of tier `admin`",
            },
        ),
    },
    openapi_extra=SECURED,
)
async def usage(
    runtime: RuntimeDep,
    caller: CallerDep,
    since: Annotated[
        TextParam,
        Query(
            description="Start, inclusive: a date (its UTC midnight) or an RFC 3339 date-time "
            "[default: 30 days before `until`]",
            json_schema_extra=_TIME,
        ),
    ] = None,
    until: Annotated[
        TextParam,
        Query(
            description="End, exclusive: a date-time, or a date (the end of that UTC day) "
            "[default: now]",
            json_schema_extra=_TIME,
        ),
    ] = None,
    key_id: Annotated[TextParam, Query(description="Only this key's calls")] = None,
    agent: Annotated[TextParam, Query(description="Only this agent's calls")] = None,
    model: Annotated[TextParam, Query(description="Only calls this model answered")] = None,
    by: Annotated[
        str,
        Query(
            description="Group by some of `key`, `agent`, `model` (the model that answered, "
            "after fallbacks) and `day` (UTC), comma-separated",
            json_schema_extra=_BY,
        ),
    ] = ",".join(GROUPINGS),
    limit: Annotated[int, Query(ge=1, le=10_000, description="At most this many rows")] = 1000,
) -> Response:
    """Usage and cost from the request records, grouped; the total counts every record in
    the window, rows left out by `limit` included (`truncated` says so)."""
    require_admin(caller)
    query = UsageQuery(
        since=_time("since", since),
        until=_time("until", until, end_of_day=True),
        key_id=key_id,
        agent=agent,
        model=model,
        by=_grouping(by),
        limit=limit,
    )
    report = await usage_report(runtime.db, query)
    body = {**report.to_json(), "economy": runtime.economy.report()}
    return _json(body)


@router.get(
    "/economy",
    operation_id="economyStatus",
    response_model=None,
    responses={
        200: ok(EconomyReport, "Budgets in economy mode, and lifted ones"),
        **errors(401, 403, described=_ADMIN_ONLY),
    },
    openapi_extra=SECURED,
)
async def economy_status(runtime: RuntimeDep, caller: CallerDep) -> Response:
    require_admin(caller)
    return _json(runtime.economy.report())


@router.post(
    "/economy/off",
    operation_id="economyOff",
    response_model=None,
    responses={
        200: ok(EconomyReport, "Lifted until the end of the UTC day, on every process"),
        **errors(400, 401, 403, 413, described=_ADMIN_ONLY),
    },
    openapi_extra=SECURED,
)
async def economy_off(payload: EconomyLift, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Serve the budget's calls as usual (its budget only counts) until the end of the UTC
    day: an operator's decision, audited in the log."""
    require_admin(caller)
    now = datetime.now(UTC)
    end_of_day = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    await runtime.economy.lift(payload.budget, end_of_day.timestamp())
    log.warning("economy_lifted_by_operator", budget=payload.budget, key_id=caller.key_id)
    return _json(runtime.economy.report())


@router.get(
    "/cache",
    operation_id="cacheStatus",
    response_model=None,
    responses={
        200: ok(CacheReport, "The response cache's entries and this process's lookups"),
        **errors(401, 403, described=_ADMIN_ONLY),
    },
    openapi_extra=SECURED,
)
async def cache_status(runtime: RuntimeDep, caller: CallerDep) -> Response:
    require_admin(caller)
    return _json(await runtime.cache.stats())


@router.post(
    "/cache/clear",
    operation_id="cacheClear",
    response_model=None,
    responses={
        200: ok(CacheCleared, "The entries dropped (in Redis: for every process)"),
        **errors(400, 401, 403, 413, described=_ADMIN_ONLY),
    },
    openapi_extra=SECURED,
)
async def cache_clear(payload: CacheClear, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Drop the entries of one namespace (`key:<key id>`, `agent:<name>`) or every entry;
    audited in the log."""
    require_admin(caller)
    cleared = await runtime.cache.clear(payload.namespace)
    log.warning("cache_cleared_by_operator", namespace=payload.namespace or "all",
                entries=cleared, key_id=caller.key_id)  # fmt: skip
    return _json({"cleared": cleared})


def _time(param: str, value: str | None, *, end_of_day: bool = False) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value, end_of_day=end_of_day)
    except ValueError as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param, code="invalid_parameter") from None


def _grouping(value: str) -> tuple[Grouping, ...]:
    try:
        return parse_grouping(value)
    except ValueError as exc:
        raise InvalidRequest(f"by: {exc}", param="by", code="invalid_parameter") from None
