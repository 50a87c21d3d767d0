"""Operator endpoints: what the resilience layer is doing right now.

They need a key of tier ``admin`` (``guarita keys create --name ops --tier admin``), or
auth switched off for local development.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from guarita.api.deps import CallerDep, RuntimeDep
from guarita.api.openapi import SECURED, errors, ok
from guarita.api.schemas import BreakerReport
from guarita.errors import PermissionDenied
from guarita.resilience.breaker import BreakerState
from guarita.types import Caller

router = APIRouter(prefix="/admin", tags=["admin"])
ADMIN_TIER = "admin"


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
        **errors(401, 403, described={403: "The key is not of tier `admin`"}),
    },
    openapi_extra=SECURED,
)
async def breakers(runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Every deployment's breaker (state, counters), load and retry budget."""
    require_admin(caller)
    states = await runtime.breakers.snapshot()
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
                    "breaker": asdict(states.get(d.name, BreakerState())) if d.breaker else None,
                }
                for d in group.deployments
            ],
        }
    return Response(orjson.dumps({"models": models}), media_type="application/json")
