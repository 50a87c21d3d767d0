"""``/admin/requests/{request_id}``: one request's records and their reasoning and tool
steps (docs/observability.md).

Needs ``viewer``, ``operator`` or ``admin``; audited as the other admin calls, and as a
``data.read`` of ``requests`` (like ``/admin/usage``): it shows what a caller asked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel
from starlette.responses import Response

from guarita.api.admin import _READERS, READ_ROLES, AuditedRoute, _audit_read
from guarita.api.deps import CallerDep, RuntimeDep
from guarita.api.openapi import SECURED, errors, ok
from guarita.auth import require_role
from guarita.errors import RequestNotFound
from guarita.store.models import REQUEST_ID_MAX
from guarita.store.steps import request_with_steps

router = APIRouter(prefix="/admin/requests", tags=["admin"], route_class=AuditedRoute)

# what the request-id middleware accepts (printable ASCII), less "/" (a path separator)
_REQUEST_ID = rf"^[!-.0-~]{{1,{REQUEST_ID_MAX}}}$"


class StepOut(BaseModel):
    step_index: int
    kind: str
    """``reasoning``, ``tool_call`` or ``tool_result``."""
    name: str | None
    call_id: str | None
    content: str
    """PII-masked, cut to ``steps.max_chars`` (``truncated``)."""
    truncated: bool
    created_at: datetime


class RecordOut(BaseModel):
    """One row of the ``requests`` table (its columns, docs/observability.md) and its steps."""

    model_config = {"extra": "allow"}
    record_id: str | None
    request_id: str
    created_at: datetime
    agent: str | None
    model: str
    status: str
    status_code: int
    latency_ms: float
    steps: list[StepOut]


class RequestOut(BaseModel):
    request_id: str
    records: list[RecordOut]
    """The request's model calls, oldest first (a request may make several)."""


@router.get(
    "/{request_id}",
    operation_id="showRequest",
    response_model=None,
    responses={200: ok(RequestOut, "The request's records, each with its steps in order"),
               **errors(400, 401, 403, 404, described={**_READERS,
                                                       400: "A malformed request id",
                                                       404: "No record of that request"})},
    openapi_extra=SECURED,
)  # fmt: skip
async def show_request(
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    request_id: Annotated[str, Path(pattern=_REQUEST_ID, description="The X-Request-ID")],
) -> Response:
    """A request's records (the ``requests`` rows) with their reasoning and tool steps."""
    require_role(caller, *READ_ROLES)
    _audit_read(request, "requests", {"request_id": request_id})
    records = await request_with_steps(runtime.db, request_id)
    if not records:
        raise RequestNotFound(f"no record of request {request_id!r}", param="request_id")
    body: dict[str, Any] = {"request_id": request_id, "records": records}
    return Response(orjson.dumps(body), media_type="application/json")
