"""``/admin/rollouts``: canary and shadow rollouts over HTTP (docs/rollouts.md).

Reading needs ``viewer``, ``operator`` or ``admin``; starting and moving a rollout
``operator`` or ``admin``. Every call is audited as the other admin calls are
(``admin.<operationId>``); each move also as ``rollout.<action>`` by the caller.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from guarita.api.admin import _CHANGERS, _READERS, CHANGE_ROLES, READ_ROLES, AuditedRoute
from guarita.api.deps import CallerDep, RuntimeDep
from guarita.api.openapi import SECURED, errors, ok
from guarita.auth import require_role
from guarita.ops.rollouts import RolloutService
from guarita.store.rollouts import Rollout
from guarita.telemetry.audit import actor_of

router = APIRouter(prefix="/admin/rollouts", tags=["admin"], route_class=AuditedRoute)

State = Literal[
    "shadow", "canary", "awaiting_approval", "paused", "completed", "rolled_back", "aborted"
]
IdParam = Annotated[str, Path(description="The rollout's id (ro_...)")]


class RolloutStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200)
    change_type: str = Field(
        min_length=1, max_length=100,
        description="A row of the decision matrix (rollouts.change_types): new_model, "
        "prompt_update, config_change, security_hotfix by default",
    )  # fmt: skip
    candidate_prompt: str | None = Field(
        default=None, max_length=300,
        description="NAME@VERSION of the agent's prompt; on completion its label moves there",
    )  # fmt: skip
    candidate_model: str | None = Field(default=None, max_length=200)


class Decision(BaseModel):
    at: str | None = None
    stage: int
    action: str = Field(description="start, promote, complete, rollback, hold, ...")
    state: State
    reasons: list[str]
    figures: dict[str, Any]
    actor: str


class RolloutOut(BaseModel):
    id: str
    agent: str
    change_type: str
    strategy: str
    candidate_prompt: str | None
    candidate_model: str | None
    stable_prompt: str | None
    stable_model: str
    stages: list[int]
    stage: int = Field(description="Index into stages")
    percent: int = Field(description="Of the agent's traffic on the candidate now")
    state: State
    in_effect: bool = Field(description="Whether it routes traffic")
    stage_started_at: str
    version: int = Field(description="Grows by one at each move (compare-and-swap)")
    created_by: str
    created_at: str
    updated_at: str
    last_decision: Decision | None
    plan: dict[str, Any]
    monitoring_until: str | None = Field(
        description="A completed rollout: until when urgent drift or a used-up error budget "
        "rolls it back (the change type's monitoring window)"
    )


class StageTotals(BaseModel):
    stage: int
    variant: Literal["stable", "canary"]
    requests: int
    errors: int
    tokens: int
    cost_usd: float


class Verdict(BaseModel):
    action: str
    reasons: list[str]
    figures: dict[str, Any]


class ShadowOut(BaseModel):
    verdict: Literal["APPROVE", "REVIEW", "REJECT"]
    reasons: list[str]
    figures: dict[str, Any]


class RolloutReport(BaseModel):
    rollout: RolloutOut
    decisions: list[Decision]
    stages: list[StageTotals]
    current_stage: Verdict | None = Field(description="The current stage's decision now")
    shadow: ShadowOut | None


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _out(rollout: Rollout) -> Response:
    return _json(RolloutService.to_json(rollout))


@router.post(
    "",
    operation_id="startRollout",
    response_model=None,
    status_code=201,
    responses={201: ok(RolloutOut, "The rollout, started (every API process routes by it "
                       "within 1 s)"),
               **errors(400, 401, 403, 404, 409, 413, described=_CHANGERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def start_rollout(payload: RolloutStart, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Start a rollout of a candidate prompt version and/or model by the change type's plan;
    409 ``rollout_active`` when the agent has one in effect."""
    require_role(caller, *CHANGE_ROLES)
    rollout = await runtime.rollouts.start(
        payload.agent, payload.change_type, payload.candidate_prompt, payload.candidate_model,
        actor=actor_of(caller),
    )  # fmt: skip
    return _json(RolloutService.to_json(rollout), 201)


@router.get(
    "",
    operation_id="listRollouts",
    response_model=None,
    responses={200: ok(list[RolloutOut], "The newest rollouts first (100 at most)"),
               **errors(400, 401, 403, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def list_rollouts(
    runtime: RuntimeDep,
    caller: CallerDep,
    agent: Annotated[str | None, Query(max_length=200, description="Only this agent's")] = None,
) -> Response:
    """Rollouts, newest first."""
    require_role(caller, *READ_ROLES)
    return _json([RolloutService.to_json(r) for r in await runtime.rollouts.list(agent=agent)])


@router.get(
    "/{rollout_id}",
    operation_id="showRollout",
    response_model=None,
    responses={200: ok(RolloutOut, "The rollout"),
               **errors(401, 403, 404, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def show_rollout(rollout_id: IdParam, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """One rollout: its state, stage, percent and last decision."""
    require_role(caller, *READ_ROLES)
    return _out(await runtime.rollouts.get(rollout_id))


@router.get(
    "/{rollout_id}/report",
    operation_id="reportRollout",
    response_model=None,
    responses={200: ok(RolloutReport, "Decisions, per-stage figures, the shadow verdict"),
               **errors(401, 403, 404, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def report_rollout(rollout_id: IdParam, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Every decision, requests, errors, tokens and cost per stage and arm, the current
    stage's decision as it stands, and the shadow verdict (when it mirrored)."""
    require_role(caller, *READ_ROLES)
    return _json(await runtime.rollouts.report(rollout_id))


def _move(verb: str, summary: str) -> Any:
    @router.post(
        f"/{{rollout_id}}/{verb}",
        operation_id=f"{verb}Rollout",
        response_model=None,
        responses={200: ok(RolloutOut, "The rollout, moved"),
                   **errors(401, 403, 404, 409, described=_CHANGERS)},
        openapi_extra=SECURED,
        summary=summary,
    )  # fmt: skip
    async def move(rollout_id: IdParam, runtime: RuntimeDep, caller: CallerDep) -> Response:
        require_role(caller, *CHANGE_ROLES)
        action = getattr(runtime.rollouts, verb)
        return _out(await action(rollout_id, actor=actor_of(caller)))

    move.__name__ = f"{verb}_rollout"
    move.__doc__ = f"{summary}; 409 ``rollout_state`` when its state does not allow it."
    return move


pause_rollout = _move("pause", "Stop deciding (the traffic stays where it is)")
resume_rollout = _move("resume", "Go on deciding after a pause")
abort_rollout = _move("abort", "Send all traffic back to the stable version, for good")
approve_rollout = _move("approve", "Take the promotion a plan's human approval held")
