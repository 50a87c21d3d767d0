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
from guarita.errors import PermissionDenied
from guarita.resilience.breaker import BreakerState
from guarita.types import Caller

router = APIRouter(prefix="/admin", tags=["admin"])
ADMIN_TIER = "admin"


def require_admin(caller: Caller) -> None:
    # "local" is the anonymous caller of auth-off or localhost development mode
    if caller.tier not in (ADMIN_TIER, Caller.anonymous().tier):
        raise PermissionDenied(f"this endpoint needs a key of tier '{ADMIN_TIER}'")


@router.get("/breakers")
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
