"""``GET /admin/drift``: each watched agent's drift, as ``guarita drift report`` shows it
(docs/observability.md). Needs ``viewer``, ``operator`` or ``admin``; audited as the other
admin calls are."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from guarita.api.admin import _READERS, READ_ROLES, AuditedRoute
from guarita.api.deps import CallerDep, RuntimeDep
from guarita.api.openapi import SECURED, errors, ok
from guarita.auth import require_role

router = APIRouter(prefix="/admin/drift", tags=["admin"], route_class=AuditedRoute)


class BaselineOut(BaseModel):
    agent: str
    kind: str
    starts_at: str
    ends_at: str
    set_at: str
    set_by: str = Field(description="auto (the first window after a start) or who fixed it")


class EvaluationOut(BaseModel):
    agent: str
    kind: str
    created_at: str
    level: str = Field(description="no_action, monitor, warning or urgent_rollback")
    score: float = Field(description="A lower bound on the total variation distance, 0..1")
    report: dict[str, Any] = Field(description="p-values, MMD², accuracy, window bounds")


class AgentDrift(BaseModel):
    agent: str
    kind: str = Field(description="output (answers) or input (users' last messages)")
    samples: int
    baseline: BaselineOut | None
    latest: EvaluationOut | None


class DriftOut(BaseModel):
    enabled: bool
    window: int
    agents: list[AgentDrift]


@router.get(
    "",
    operation_id="driftReport",
    response_model=None,
    responses={200: ok(DriftOut, "Per agent and kind: baseline and latest evaluation"),
               **errors(400, 401, 403, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def drift_report(
    runtime: RuntimeDep,
    caller: CallerDep,
    agent: Annotated[str | None, Query(max_length=200, description="One agent only")] = None,
) -> Response:
    """The latest drift evaluation of each watched agent (answers and inputs)."""
    require_role(caller, *READ_ROLES)
    from guarita.ops.drift_service import drift_report as report
    from guarita.store.drift import DriftStore

    drift = runtime.drift
    store = drift.store if drift is not None else DriftStore(runtime.db)
    watched = drift.evaluator.agents if drift is not None else []
    body = {"enabled": drift is not None, "window": runtime.settings.drift.window,
            "agents": await report(store, watched, agent)}  # fmt: skip
    return Response(orjson.dumps(body), media_type="application/json")
