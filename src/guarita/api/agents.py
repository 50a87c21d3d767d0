"""The agent API: a chat turn with session memory, and long work as polled tasks."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from guarita.api.deps import (
    RuntimeDep,
    UserDep,
    client_ip,
    record_audit,
    request_context,
    request_id,
)
from guarita.api.openai import requested_deadline_ms
from guarita.api.openapi import (
    DEADLINE_HEADER,
    MODEL_CALL_ERRORS,
    NO_USER_ROLE,
    RATE_LIMIT_HEADERS,
    ROUTE_HEADERS,
    SECURED,
    errors,
    ok,
)
from guarita.api.schemas import (
    AgentChatRequest,
    AgentChatResponse,
    TaskAccepted,
    TaskRequest,
    TaskStatus,
)
from guarita.errors import TaskNotFound
from guarita.store.tasks import TaskInfo
from guarita.types import Call

router = APIRouter(prefix="/api", tags=["agents"])
_TASK_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_JSON = "application/json"


@router.post(
    "/chat",
    operation_id="agentChat",
    response_model=None,
    responses={
        200: ok(
            AgentChatResponse,
            "The agent's answer; the turn is kept in the session",
            headers={**RATE_LIMIT_HEADERS, **ROUTE_HEADERS},
        ),
        **errors(
            *MODEL_CALL_ERRORS,
            described={
                400: "Invalid request, or the message does not fit the agent's context window",
                404: "No agent of that name, or a session of another key",
            },
        ),
    },
    openapi_extra={**SECURED, "parameters": [DEADLINE_HEADER]},
)
async def chat(
    payload: AgentChatRequest, request: Request, runtime: RuntimeDep, caller: UserDep
) -> Response:
    result = await runtime.agents.chat(
        payload.message,
        caller=caller,
        request_id=request_id(request),
        agent_name=payload.agent,
        session_id=payload.session_id,
        context=request_context(request),
        deadline_ms=requested_deadline_ms(request),
        client_ip=client_ip(request),
    )
    return Response(
        orjson.dumps(result.to_json()), media_type=_JSON, headers=dict(result.response_headers)
    )


@router.post(
    "/tasks",
    status_code=202,
    operation_id="createTask",
    response_model=None,
    responses={
        202: ok(
            TaskAccepted,
            "Accepted (written to the store) and queued; poll `Location` for the outcome",
            headers={
                "Location": {
                    "description": "The task's URL",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            links={
                "GetTask": {
                    "operationId": "getTask",
                    "parameters": {"task_id": "$response.body#/task_id"},
                }
            },
        ),
        **errors(400, 401, 403, 404, 413, 429, 503, described={404: "No agent of that name"}),
    },
    openapi_extra=SECURED,
)
async def create_task(
    payload: TaskRequest, request: Request, runtime: RuntimeDep, caller: UserDep
) -> Response:
    agent, settings = runtime.agents.resolve(payload.agent)
    admission = Call(
        request_id=request_id(request),
        model=settings.model,
        body={"messages": [{"role": "user", "content": payload.message}]},
        caller=caller,
        agent=agent,
        endpoint="api.chat",  # a task is an agent chat, run later
        client_ip=client_ip(request),
    )
    # the guards' refusals come now, and the task keeps the message as the provider will
    # see it (personal data as placeholders, which the answer keeps: nothing maps them
    # back once the request is over)
    runtime.input_guard.prepare(admission)
    message = admission.messages[-1]["content"]
    limit_headers = await runtime.rate_limits.admit_submission(admission)
    body: dict[str, Any] = {
        "message": message,
        "caller_name": caller.name,
        "tier": caller.tier,
    }
    if payload.session_id:
        body["session_id"] = payload.session_id
    task = await runtime.submit_task(
        agent=agent, payload=body, key_id=caller.key_id, request_id=request_id(request)
    )
    request_context(request).task_id = task.id
    return Response(
        orjson.dumps({"task_id": task.id, "status": task.status}),
        status_code=202,
        media_type=_JSON,
        headers={"location": f"/api/tasks/{task.id}", **limit_headers},
    )


@router.get(
    "/tasks/{task_id}",
    operation_id="getTask",
    response_model=None,
    responses={
        200: ok(TaskStatus, "The task's status, and its result or error once finished"),
        **errors(401, 403, 404, described={**NO_USER_ROLE, 404: "No task of that id for this key"}),
    },
    openapi_extra=SECURED,
)
async def get_task(
    task_id: str, request: Request, runtime: RuntimeDep, caller: UserDep
) -> Response:
    """A task's status; reading a finished one (its result or error) is audited as
    ``data.read``."""
    task = await runtime.task_store.get(task_id) if _TASK_ID.fullmatch(task_id) else None
    if task is None or task.key_id != caller.key_id:
        raise TaskNotFound(f"task {task_id!r} does not exist", param="task_id")
    if task.result is not None or task.error is not None:
        record_audit(request, "data", "data.read", f"task:{task.id}", "success",
                     details={"status": task.status})  # fmt: skip
    return Response(orjson.dumps(task_json(task)), media_type=_JSON)


def task_json(task: TaskInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task.id,
        "status": task.status,
        "agent": task.agent,
        "attempts": task.attempts,
        "deliveries": task.deliveries,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
    }
    if task.result is not None:
        body["result"] = task.result
    if task.error is not None:
        body["error"] = task.error
    return body
