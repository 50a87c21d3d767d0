"""Operator endpoints: what the resilience layer is doing right now, usage so far, and
the audit log.

Who may call them is decided by the caller's roles (docs/auth.md): the read-only ones
(GETs) need ``viewer``, ``operator`` or ``admin``; the ones that change something (cache
clear, economy off) ``operator`` or ``admin``; the audit log ``admin``. A key of tier
``admin`` holds ``admin`` (``guarita keys create --name ops --tier admin``); auth switched
off for local development lets everything through. Every call is audited
(:class:`AuditedRoute`): ``admin.<operationId>`` with its outcome, and reading records or
the audit log also as ``data.read``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
import structlog
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException
from starlette.responses import Response

from guarita.api.deps import CallerDep, RuntimeDep, record_audit
from guarita.api.openapi import SECURED, errors, ok
from guarita.api.schemas import (
    AuditList,
    BreakerReport,
    CacheClear,
    CacheCleared,
    CacheReport,
    EconomyLift,
    EconomyReport,
    UsageReport,
)
from guarita.auth import OPERATOR, VIEWER, require_role
from guarita.errors import GuaritaError, InvalidRequest
from guarita.store.audit import AuditChain, AuditQuery
from guarita.store.usage import (
    GROUPINGS,
    Grouping,
    UsageQuery,
    parse_grouping,
    parse_time,
    usage_report,
)

log = structlog.get_logger("guarita.admin")


def outcome_of(status: int) -> str:
    """An answer's status as an audit outcome."""
    if status < 400:
        return "success"
    return "denied" if status in (401, 403) else "failure"


class AuditedRoute(APIRoute):
    """A route whose every call is audited: action ``admin.<operationId>``, target the
    path, outcome from the status it answers (``success``, ``denied`` for 401/403,
    ``failure`` for any other error)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        action = f"admin.{self.operation_id or self.name}"

        async def audited(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as exc:
                if isinstance(exc, GuaritaError | HTTPException):
                    status = exc.status_code
                else:  # validation errors leave as 400 (api/errors.py); anything else 500
                    status = 400 if isinstance(exc, RequestValidationError) else 500
                _audit_call(request, action, status)
                raise
            _audit_call(request, action, response.status_code)
            return response

        return audited


def _audit_call(request: Request, action: str, status: int) -> None:
    details = {"method": request.method, "status": status}
    record_audit(request, "access", action, request.url.path, outcome_of(status), details=details)


router = APIRouter(prefix="/admin", tags=["admin"], route_class=AuditedRoute)

READ_ROLES = (VIEWER, OPERATOR)
"""Who may call the read-only endpoints (besides admin)."""
CHANGE_ROLES = (OPERATOR,)
"""Who may call the endpoints that change something (besides admin)."""
_READERS = {403: "The caller holds none of the roles `viewer`, `operator`, `admin`"}
_CHANGERS = {403: "The caller holds neither the role `operator` nor `admin`"}
_ADMINS = {403: "The caller does not hold the role `admin`"}


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/breakers",
    operation_id="listBreakers",
    response_model=None,
    responses={
        200: ok(BreakerReport, "Every model's deployments, their breakers and load"),
        **errors(401, 403, described=_READERS),
    },
    openapi_extra=SECURED,
)
async def breakers(runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Every deployment's breaker (state, counters), load and retry budget."""
    require_role(caller, *READ_ROLES)
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
                403: _READERS[403],
            },
        ),
    },
    openapi_extra=SECURED,
)
async def usage(
    request: Request,
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
    require_role(caller, *READ_ROLES)
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
    filters = {"key_id": key_id, "agent": agent, "model": model, "by": by, "since": since,
               "until": until}  # fmt: skip
    _audit_read(request, "requests", filters)
    body = {**report.to_json(), "economy": runtime.economy.report()}
    return _json(body)


@router.get(
    "/economy",
    operation_id="economyStatus",
    response_model=None,
    responses={
        200: ok(EconomyReport, "Budgets in economy mode, and lifted ones"),
        **errors(401, 403, described=_READERS),
    },
    openapi_extra=SECURED,
)
async def economy_status(runtime: RuntimeDep, caller: CallerDep) -> Response:
    require_role(caller, *READ_ROLES)
    return _json(runtime.economy.report())


@router.post(
    "/economy/off",
    operation_id="economyOff",
    response_model=None,
    responses={
        200: ok(EconomyReport, "Lifted until the end of the UTC day, on every process"),
        **errors(400, 401, 403, 413, described=_CHANGERS),
    },
    openapi_extra=SECURED,
)
async def economy_off(payload: EconomyLift, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Serve the budget's calls as usual (its budget only counts) until the end of the UTC
    day: an operator's decision, audited in the log."""
    require_role(caller, *CHANGE_ROLES)
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
        **errors(401, 403, described=_READERS),
    },
    openapi_extra=SECURED,
)
async def cache_status(runtime: RuntimeDep, caller: CallerDep) -> Response:
    require_role(caller, *READ_ROLES)
    return _json(await runtime.cache.stats())


@router.post(
    "/cache/clear",
    operation_id="cacheClear",
    response_model=None,
    responses={
        200: ok(CacheCleared, "The entries dropped (in Redis: for every process)"),
        **errors(400, 401, 403, 413, described=_CHANGERS),
    },
    openapi_extra=SECURED,
)
async def cache_clear(payload: CacheClear, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Drop the entries of one namespace (`key:<key id>`, `agent:<name>`) or every entry;
    audited in the log."""
    require_role(caller, *CHANGE_ROLES)
    cleared = await runtime.cache.clear(payload.namespace)
    log.warning("cache_cleared_by_operator", namespace=payload.namespace or "all",
                entries=cleared, key_id=caller.key_id)  # fmt: skip
    return _json({"cleared": cleared})


def _audit_read(request: Request, target: str, filters: dict[str, Any]) -> None:
    """``data.read`` of ``target``, with the filters given (names and ids, never data)."""
    given = {k: v for k, v in filters.items() if v is not None}
    record_audit(request, "data", "data.read", target, "success", details={"filters": given})


_NO_NUL = r"^[^\x00]*$"
_SEQ_MAX = 2**63 - 1


@router.get(
    "/audit",
    operation_id="listAudit",
    response_model=None,
    responses={
        200: ok(AuditList, "Audit entries in chain order, oldest first"),
        **errors(
            400,
            401,
            403,
            described={
                400: "A malformed `since` or `until`, an `after` or `limit` out of range, "
                "an unknown `category` or `outcome`, a NUL character",
                403: _ADMINS[403],
            },
        ),
    },
    openapi_extra=SECURED,
)
async def audit_log(
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    actor: Annotated[
        TextParam, Query(description="Only entries of this actor", pattern=_NO_NUL, max_length=500)
    ] = None,
    action: Annotated[
        TextParam,
        Query(
            description="Only this action (`auth.failed`, `data.read`, …)",
            pattern=_NO_NUL,
            max_length=500,
        ),
    ] = None,
    target: Annotated[
        TextParam, Query(description="Only this target", pattern=_NO_NUL, max_length=500)
    ] = None,
    category: Annotated[
        Literal["access", "data", "change"] | SkipJsonSchema[None],
        Query(description="Only this category"),
    ] = None,
    outcome: Annotated[
        Literal["success", "denied", "failure"] | SkipJsonSchema[None],
        Query(description="Only this outcome"),
    ] = None,
    since: Annotated[
        TextParam,
        Query(
            description="Start, inclusive: a date (its UTC midnight) or an RFC 3339 date-time",
            json_schema_extra=_TIME,
        ),
    ] = None,
    until: Annotated[
        TextParam,
        Query(
            description="End, exclusive: a date-time, or a date (the end of that UTC day)",
            json_schema_extra=_TIME,
        ),
    ] = None,
    after: Annotated[
        int | SkipJsonSchema[None],
        Query(
            ge=0, le=_SEQ_MAX, description="Cursor: entries after this `seq` (a page's `last_seq`)"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many entries")] = 100,
) -> Response:
    """The audit log, filtered and paginated (oldest first); reading it is audited too."""
    require_role(caller)  # admin only: the log names every caller and what they did
    query = AuditQuery(
        actor=actor, action=action, target=target, category=category, outcome=outcome,
        since=_time("since", since), until=_time("until", until, end_of_day=True),
        after=after, limit=limit,
    )  # fmt: skip
    entries, more = await AuditChain(runtime.db).list(query)
    filters = {"actor": actor, "action": action, "target": target, "category": category,
               "outcome": outcome, "since": since, "until": until, "after": after}  # fmt: skip
    _audit_read(request, "audit_log", filters)
    last = entries[-1]["seq"] if entries else None
    return _json({"object": "list", "data": entries, "has_more": more, "last_seq": last})


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
