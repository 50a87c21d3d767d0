"""The agent API: a chat turn with session memory, and long work as polled tasks."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from guarita.api.deps import CallerDep, RuntimeDep, request_id, request_info
from guarita.api.openai import requested_deadline_ms
from guarita.api.schemas import AgentChatRequest, TaskRequest
from guarita.errors import TaskNotFound
from guarita.store.tasks import TaskInfo

router = APIRouter(prefix="/api", tags=["agents"])
_TASK_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_JSON = "application/json"


@router.post("/chat")
async def chat(
    payload: AgentChatRequest, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> Response:
    result = await runtime.agents.chat(
        payload.message,
        caller=caller,
        request_id=request_id(request),
        agent_name=payload.agent,
        session_id=payload.session_id,
        info=request_info(request),
        deadline_ms=requested_deadline_ms(request),
    )
    return Response(orjson.dumps(result.to_json()), media_type=_JSON)


@router.post("/tasks", status_code=202)
async def create_task(
    payload: TaskRequest, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> Response:
    agent, _ = runtime.agents.resolve(payload.agent)
    body: dict[str, Any] = {
        "message": payload.message,
        "caller_name": caller.name,
        "tier": caller.tier,
    }
    if payload.session_id:
        body["session_id"] = payload.session_id
    task = await runtime.submit_task(
        agent=agent, payload=body, key_id=caller.key_id, request_id=request_id(request)
    )
    request_info(request)["task_id"] = task.id
    return Response(
        orjson.dumps({"task_id": task.id, "status": task.status}),
        status_code=202,
        media_type=_JSON,
        headers={"location": f"/api/tasks/{task.id}"},
    )


@router.get("/tasks/{task_id}")
async def get_task(task_id: str, runtime: RuntimeDep, caller: CallerDep) -> Response:
    task = await runtime.task_store.get(task_id) if _TASK_ID.fullmatch(task_id) else None
    if task is None or task.key_id != caller.key_id:
        raise TaskNotFound(f"task {task_id!r} does not exist", param="task_id")
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
