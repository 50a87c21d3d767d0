"""``/admin/slo``: every agent's error budgets, evaluated now from the store (docs/slo.md).

Needs ``viewer``, ``operator`` or ``admin``; audited as the other admin calls are. A read:
evaluating here moves no budget state (the background evaluation does).
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.responses import Response

from guarita.api.admin import _READERS, READ_ROLES, AuditedRoute
from guarita.api.deps import CallerDep, RuntimeDep
from guarita.api.openapi import SECURED, errors, ok
from guarita.auth import require_role
from guarita.errors import AgentNotFound

router = APIRouter(prefix="/admin/slo", tags=["admin"], route_class=AuditedRoute)


class WindowAlertOut(BaseModel):
    severity: str
    burn_rate: float
    long_window: str
    short_window: str
    firing: bool


class SloOut(BaseModel):
    """One agent's SLO: its budget over the period, burn rates per window, alert and freeze."""

    agent: str
    slo: str
    target: float
    threshold: float | None
    period: str
    good: int
    total: int
    error_budget: float
    consumed: float
    remaining: float
    burn_rates: dict[str, float | None]
    time_to_exhaustion_s: float | None
    alert: str
    budget: str
    frozen: bool
    alerts: list[WindowAlertOut]


@router.get(
    "",
    operation_id="showSlo",
    response_model=None,
    responses={200: ok(list[SloOut], "Every agent's SLOs (or one agent's)"),
               **errors(400, 401, 403, 404, described={**_READERS,
                                                       404: "No such agent"})},
    openapi_extra=SECURED,
)  # fmt: skip
async def show_slo(
    runtime: RuntimeDep,
    caller: CallerDep,
    agent: Annotated[str | None, Query(max_length=200, description="Only this agent")] = None,
) -> Response:
    """Budgets, burn rates, time to exhaustion, alert and freeze state per agent and SLO."""
    require_role(caller, *READ_ROLES)
    if agent is not None and agent not in runtime.settings.agents:
        raise AgentNotFound(f"no agent named {agent!r}", param="agent")
    statuses = await runtime.slo.status(agent)
    return Response(orjson.dumps([s.as_dict() for s in statuses]), media_type="application/json")
