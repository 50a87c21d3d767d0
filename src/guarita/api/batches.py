"""The OpenAI Batch API: ``/v1/files`` (batch input, output and error files) and
``/v1/batches``, in OpenAI's shapes, so that the OpenAI SDK's ``client.files`` and
``client.batches`` work unchanged (docs/batches.md).

Files and batches belong to the key that made them: another key gets 404 for them. An
admin key may also look at and cancel any batch (not read its files: they hold prompts
and answers). A malformed input file is a 400 naming its line, at upload and at creation.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from starlette.responses import Response

from guarita.api.deps import (
    RuntimeDep,
    UserDep,
    get_caller,
    record_audit,
    request_context,
    request_id,
)
from guarita.api.openapi import NO_USER_ROLE, SECURED, errors, ok
from guarita.api.schemas import (
    BatchCreateRequest,
    BatchList,
    BatchObject,
    FileDeleted,
    FileList,
    FileObject,
)
from guarita.auth import OPERATOR, USER, has_role, require_role
from guarita.batches.input import parse_input
from guarita.errors import (
    BatchNotFound,
    Conflict,
    FileNotFound,
    InvalidRequest,
    PermissionDenied,
)
from guarita.runtime import Runtime
from guarita.store.batches import (
    CANCELLABLE,
    CANCELLED,
    CANCELLING,
    MOMENTS,
    BatchInfo,
    FileInfo,
)
from guarita.types import Caller

router = APIRouter(prefix="/v1", tags=["batches"])
_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_JSON = "application/json"
FILE_UPLOAD_PATH = "/v1/files"


class _OctetStream(Response):
    media_type = "application/octet-stream"


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type=_JSON)


def _yours(owner: str | None, caller: Caller, *, operators_too: bool = False) -> bool:
    """The caller's own; with ``operators_too``, anyone's for an admin or operator."""
    return owner == caller.key_id or (operators_too and has_role(caller, OPERATOR))


async def _batch_viewer(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """Who may look at or cancel a batch: its key's holder (role user), or an admin or
    operator (any batch)."""
    require_role(caller, USER, OPERATOR)
    return caller


BatchViewerDep = Annotated[Caller, Depends(_batch_viewer)]


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def file_json(info: FileInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "object": "file",
        "bytes": info.size,
        "created_at": _unix(info.created_at),
        "filename": info.filename,
        "purpose": info.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_json(batch: BatchInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": batch.errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
    }
    body.update({f"{name}_at": _unix(batch.times[name]) for name in MOMENTS})
    body["request_counts"] = {
        "total": batch.total,
        "completed": batch.completed,
        "failed": batch.failed,
    }
    body["metadata"] = batch.metadata
    return body


def _page(items: list[dict[str, Any]], more: bool) -> Response:
    return _json(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": more,
        }
    )


async def _own_file(runtime: Runtime, file_id: str, caller: Caller) -> FileInfo:
    info = await runtime.files.get(file_id) if _ID.fullmatch(file_id) else None
    if info is None or not _yours(info.key_id, caller):
        raise FileNotFound(f"No such File object: {file_id}", param="file_id")
    return info


async def _visible_batch(runtime: Runtime, batch_id: str, caller: Caller) -> BatchInfo:
    batch = await runtime.batches.get(batch_id) if _ID.fullmatch(batch_id) else None
    if batch is None or not _yours(batch.key_id, caller, operators_too=True):
        raise BatchNotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return batch


_FILE_LINKS = {
    name: {"operationId": operation, "parameters": {"file_id": "$response.body#/id"}}
    for name, operation in (
        ("GetFile", "retrieveFile"),
        ("GetFileContent", "downloadFile"),
        ("DeleteFile", "deleteFile"),
    )
}
_FILE_LINKS["CreateBatch"] = {
    "operationId": "createBatch",
    "requestBody": {"input_file_id": "$response.body#/id", "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"},
}  # fmt: skip
_EXAMPLE_LINE = (
    '{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", '
    '"body": {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}}\n'
)
_BATCH_LINKS = {
    name: {"operationId": operation, "parameters": {"batch_id": "$response.body#/id"}}
    for name, operation in (("GetBatch", "retrieveBatch"), ("CancelBatch", "cancelBatch"))
}
_NO_FILE = {**NO_USER_ROLE, 404: "No file of that id for this key"}
_NO_BATCH = {
    403: "The caller holds none of the roles `user`, `operator`, `admin`",
    404: "No batch of that id for this key (an admin or operator sees every batch)",
}


@router.post(
    "/files",
    operation_id="createFile",
    response_model=None,
    responses={
        200: ok(FileObject, "The stored file", links=_FILE_LINKS),
        **errors(
            400,
            401,
            403,
            413,
            described={
                **NO_USER_ROLE,
                400: "Not a batch input file: the message names the line and what is wrong",
                413: "Larger than `batches.max_file_bytes`",
            },
        ),
    },
    openapi_extra=SECURED,
)
async def create_file(
    runtime: RuntimeDep,
    caller: UserDep,
    file: Annotated[
        UploadFile, File(description="JSONL: one request a line", examples=[_EXAMPLE_LINE])
    ],
    purpose: Annotated[Literal["batch"], Form(description="`batch`: a batch's input")],
) -> Response:
    content = await file.read()
    requests = parse_input(content, max_lines=runtime.settings.batches.max_lines)
    info = await runtime.files.create(
        key_id=caller.key_id,
        filename=(file.filename or "file.jsonl")[:255],
        purpose=purpose,
        content=content,
        lines=len(requests),
    )
    return _json(file_json(info))


@router.get(
    "/files",
    operation_id="listFiles",
    response_model=None,
    responses={
        200: ok(FileList, "The key's files, newest first by default"),
        **errors(400, 401, 403, described=NO_USER_ROLE),
    },
    openapi_extra=SECURED,
)
async def list_files(
    runtime: RuntimeDep,
    caller: UserDep,
    purpose: Annotated[Literal["batch", "batch_output"] | None, Query()] = None,
    after: Annotated[
        str | None,
        Query(
            max_length=64, pattern=f"^{_ID.pattern}$", description="The last id of the page before"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> Response:
    files, more = await runtime.files.page(
        key_id=caller.key_id,
        purpose=purpose,
        after=after,
        limit=limit,
        newest_first=order == "desc",
    )
    return _page([file_json(f) for f in files], more)


@router.get(
    "/files/{file_id}",
    operation_id="retrieveFile",
    response_model=None,
    responses={200: ok(FileObject, "The file"), **errors(401, 403, 404, described=_NO_FILE)},
    openapi_extra=SECURED,
)
async def retrieve_file(file_id: str, runtime: RuntimeDep, caller: UserDep) -> Response:
    return _json(file_json(await _own_file(runtime, file_id, caller)))


@router.get(
    "/files/{file_id}/content",
    operation_id="downloadFile",
    response_model=None,
    response_class=_OctetStream,  # documentation only: the handler builds its own Response
    responses={
        200: {
            "description": "The file's bytes (JSONL)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **errors(401, 403, 404, described=_NO_FILE),
    },
    openapi_extra=SECURED,
)
async def file_content(
    file_id: str, request: Request, runtime: RuntimeDep, caller: UserDep
) -> Response:
    """The file's bytes; every download (or attempt) is audited as ``data.read``."""
    target = f"file:{file_id[:64]}"
    try:
        info = await _own_file(runtime, file_id, caller)
        content = await runtime.files.content(info.id)
        if content is None:  # deleted meanwhile
            raise FileNotFound(f"No such File object: {file_id}", param="file_id")
    except FileNotFound:
        record_audit(request, "data", "data.read", target, "failure",
                     details={"reason": "not_found"})  # fmt: skip
        raise
    record_audit(request, "data", "data.read", target, "success",
                 details={"purpose": info.purpose, "bytes": len(content)})  # fmt: skip
    return Response(content, media_type="application/octet-stream")


@router.delete(
    "/files/{file_id}",
    operation_id="deleteFile",
    response_model=None,
    responses={200: ok(FileDeleted, "Deleted"), **errors(401, 403, 404, described=_NO_FILE)},
    openapi_extra=SECURED,
)
async def delete_file(file_id: str, runtime: RuntimeDep, caller: UserDep) -> Response:
    info = await _own_file(runtime, file_id, caller)
    deleted = await runtime.files.delete(info.id)
    return _json({"id": info.id, "object": "file", "deleted": deleted})


@router.post(
    "/batches",
    operation_id="createBatch",
    response_model=None,
    responses={
        200: ok(BatchObject, "The batch, queued (`validating`)", links=_BATCH_LINKS),
        **errors(
            400,
            401,
            403,
            404,
            413,
            described={
                403: "The caller holds neither the role `user` nor `admin`, or is identified "
                "by a JWT (a batch runs later, as its API key is then)",
                400: "Invalid request, or an input file a batch cannot run (the message names "
                "the line)",
                404: "No input file of that id for this key",
            },
        ),
    },
    openapi_extra=SECURED,
)
async def create_batch(
    payload: BatchCreateRequest, request: Request, runtime: RuntimeDep, caller: UserDep
) -> Response:
    if caller.auth == "jwt":
        raise PermissionDenied(
            "a batch needs an API key: it runs later, as its key is then (a token cannot be "
            "checked again); upload and run it with a key"
        )
    settings = runtime.settings.batches
    if payload.completion_window not in settings.completion_windows:
        known = ", ".join(repr(w) for w in settings.completion_windows)
        raise InvalidRequest(
            f"completion_window must be {known}, not {payload.completion_window!r}",
            param="completion_window",
        )
    info = await _own_file(runtime, payload.input_file_id, caller)
    if info.purpose != "batch":
        raise InvalidRequest(
            f"file {info.id!r} has purpose {info.purpose!r}; a batch's input "
            "is a file of purpose 'batch'",
            param="input_file_id",
        )
    content = await runtime.files.content(info.id)
    if content is None:
        raise FileNotFound(f"No such File object: {info.id}", param="input_file_id")
    requests = parse_input(
        content, max_lines=settings.max_lines, endpoint=payload.endpoint, param="input_file_id"
    )
    batch = await runtime.submit_batch(
        key_id=caller.key_id,
        endpoint=payload.endpoint,
        input_file_id=info.id,
        completion_window=payload.completion_window,
        total=len(requests),
        metadata=payload.metadata,
        request_id=request_id(request),
    )
    request_context(request).task_id = batch.task_id
    return _json(batch_json(batch))


@router.get(
    "/batches/{batch_id}",
    operation_id="retrieveBatch",
    response_model=None,
    responses={
        200: ok(BatchObject, "The batch, with its progress"),
        **errors(401, 403, 404, described=_NO_BATCH),
    },
    openapi_extra=SECURED,
)
async def retrieve_batch(batch_id: str, runtime: RuntimeDep, caller: BatchViewerDep) -> Response:
    return _json(batch_json(await _visible_batch(runtime, batch_id, caller)))


@router.get(
    "/batches",
    operation_id="listBatches",
    response_model=None,
    responses={
        200: ok(BatchList, "The key's batches, newest first"),
        **errors(400, 401, 403, described=NO_USER_ROLE),
    },
    openapi_extra=SECURED,
)
async def list_batches(
    runtime: RuntimeDep,
    caller: UserDep,
    after: Annotated[
        str | None,
        Query(
            max_length=64, pattern=f"^{_ID.pattern}$", description="The last id of the page before"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    batches, more = await runtime.batches.page(key_id=caller.key_id, after=after, limit=limit)
    return _page([batch_json(b) for b in batches], more)


@router.post(
    "/batches/{batch_id}/cancel",
    operation_id="cancelBatch",
    response_model=None,
    responses={
        200: ok(BatchObject, "The batch, `cancelling` until the lines in flight end"),
        **errors(401, 403, 404, 409, described={**_NO_BATCH, 409: "The batch has already ended"}),
    },
    openapi_extra=SECURED,
)
async def cancel_batch(batch_id: str, runtime: RuntimeDep, caller: BatchViewerDep) -> Response:
    batch = await _visible_batch(runtime, batch_id, caller)
    if batch.status in CANCELLABLE:
        batch = await runtime.batches.cancel(batch.id) or batch
    if batch.status not in (CANCELLING, CANCELLED):
        raise Conflict(
            f"batch {batch.id!r} is {batch.status}: only a validating or "
            "in-progress batch can be cancelled",
            param="batch_id",
            code="batch_not_cancellable",
        )
    return _json(batch_json(batch))
