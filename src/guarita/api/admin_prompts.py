"""``/admin/prompts``: the prompt registry over HTTP (docs/prompts.md).

Reading needs ``viewer``, ``operator`` or ``admin``; pushing a version and moving a label
``operator`` or ``admin``. Every call is audited as the other admin calls are
(``admin.<operationId>``); a push and a label move also as ``prompt.pushed`` and
``prompt.label_moved`` changes by the caller.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from guarita.api.admin import _CHANGERS, _READERS, CHANGE_ROLES, READ_ROLES, AuditedRoute
from guarita.api.deps import CallerDep, RuntimeDep
from guarita.api.openapi import SECURED, errors, ok
from guarita.api.schemas import Integral
from guarita.auth import require_role
from guarita.ops.prompts import LABEL, NAME
from guarita.telemetry.audit import actor_of

router = APIRouter(prefix="/admin/prompts", tags=["admin"], route_class=AuditedRoute)

_NAME = NAME.pattern
_LABEL = LABEL.pattern
NameParam = Annotated[str, Path(pattern=_NAME, description="The prompt's name")]
MAX_VERSION = 2**31 - 1
"""Versions are 32-bit integers in the store; a larger number is a 400, not a lookup."""
VersionParam = Annotated[int, Path(gt=0, le=MAX_VERSION, description="The version number")]


class ModelConfigIn(BaseModel):
    """What a version asks of the model; unset fields are the agent's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(default=None, description="A configured model's name")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_VERSION), Integral] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1), Integral] | None = None
    stop: list[str] | None = None
    response_format: dict[str, Any] | None = None


class PromptPush(BaseModel):
    """A new version: the YAML file's fields (docs/prompts.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=_NAME)
    template: str | Annotated[list[dict[str, str]], Field(min_length=1)] = Field(
        description="A string (one system message) or a list of {role, content}; Jinja2"
    )
    variables: list[str] | None = Field(
        default=None, description="The template's variables; absent: those it uses"
    )
    model: ModelConfigIn | None = None
    author: str | None = Field(default=None, max_length=200)
    tags: list[str] = Field(default_factory=list)
    message: str | None = Field(default=None, max_length=10_000)
    label: str | None = Field(
        default=None, pattern=_LABEL, description="Also point this label at the version"
    )


class PromptVersionOut(BaseModel):
    name: str
    version: int
    template: list[dict[str, str]]
    variables: list[str]
    model: dict[str, Any]
    author: str | None
    tags: list[str]
    message: str | None
    sha256: str
    created_at: str


class LabelOut(BaseModel):
    name: str
    label: str
    version: int
    revision: int = Field(description="Grows by one at each move")
    updated_at: str
    updated_by: str


class PushedOut(BaseModel):
    version: PromptVersionOut
    created: bool = Field(description="False: the newest version had the same content")
    label: LabelOut | None


class PromptOut(BaseModel):
    name: str
    latest: int
    created_at: str
    labels: dict[str, int]


class PromptDetail(BaseModel):
    versions: list[PromptVersionOut]
    labels: list[LabelOut]


class LabelMove(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[int, Field(gt=0, le=MAX_VERSION), Integral]
    expected_version: Annotated[int, Field(ge=0, le=MAX_VERSION), Integral] | None = Field(
        default=None,
        description="Move only if the label points at this version now (0: it does not "
        "exist yet); else 409 label_conflict",
    )  # fmt: skip


class PromptDiff(BaseModel):
    name: str
    a: int
    b: int
    diff: str = Field(description="Unified diff of the templates and model configs")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get(
    "",
    operation_id="listPrompts",
    response_model=None,
    responses={200: ok(list[PromptOut], "Every prompt, its newest version and labels"),
               **errors(401, 403, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def list_prompts(runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Every prompt of the registry with its newest version and its labels."""
    require_role(caller, *READ_ROLES)
    return _json([{"name": p.name, "latest": p.latest, "created_at": p.created_at.isoformat(),
                   "labels": p.labels} for p in await runtime.prompts.list()])  # fmt: skip


@router.post(
    "",
    operation_id="pushPrompt",
    response_model=None,
    status_code=201,
    responses={201: ok(PushedOut, "The new version"),
               200: ok(PushedOut, "Unchanged: the newest version has this content"),
               **errors(400, 401, 403, 409, 413, described=_CHANGERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def push_prompt(payload: PromptPush, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Push a version; the same content as the newest version makes none. With ``label``,
    the label then points at it."""
    require_role(caller, *CHANGE_ROLES)
    actor = actor_of(caller)
    version, created = await runtime.prompts.push(
        payload.name, payload.template, variables=payload.variables,
        model=payload.model.model_dump(exclude_none=True) if payload.model else None,
        author=payload.author, tags=payload.tags, message=payload.message, actor=actor,
    )  # fmt: skip
    label = None
    if payload.label is not None:
        label = await runtime.prompts.move_label(payload.name, payload.label, version.version,
                                                 actor=actor)  # fmt: skip
    body = {"version": version.to_json(), "created": created,
            "label": label.to_json() if label else None}  # fmt: skip
    return _json(body, 201 if created else 200)


@router.get(
    "/{name}",
    operation_id="showPrompt",
    response_model=None,
    responses={200: ok(PromptDetail, "The prompt's versions and labels"),
               **errors(400, 401, 403, 404, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def show_prompt(name: NameParam, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Every version of a prompt (oldest first) and its labels."""
    require_role(caller, *READ_ROLES)
    versions = await runtime.prompts.store.versions(name)
    labels = await runtime.prompts.store.labels(name)
    return _json({"versions": [v.to_json() for v in versions],
                  "labels": [label.to_json() for label in labels]})  # fmt: skip


@router.get(
    "/{name}/versions/{version}",
    operation_id="showPromptVersion",
    response_model=None,
    responses={200: ok(PromptVersionOut, "One version"),
               **errors(400, 401, 403, 404, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def show_version(
    name: NameParam, version: VersionParam, runtime: RuntimeDep, caller: CallerDep
) -> Response:
    """One version of a prompt, as stored (immutable)."""
    require_role(caller, *READ_ROLES)
    return _json((await runtime.prompts.store.version(name, version)).to_json())


@router.get(
    "/{name}/diff",
    operation_id="diffPrompt",
    response_model=None,
    responses={200: ok(PromptDiff, "The unified diff from version a to version b"),
               **errors(400, 401, 403, 404, described=_READERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def diff_prompt(
    name: NameParam,
    a: Annotated[int, Query(gt=0, le=MAX_VERSION, description="The older version")],
    b: Annotated[int, Query(gt=0, le=MAX_VERSION, description="The newer version")],
    runtime: RuntimeDep,
    caller: CallerDep,
) -> Response:
    """What changed between two versions: templates and model configs, as a unified diff."""
    require_role(caller, *READ_ROLES)
    return _json({"name": name, "a": a, "b": b, "diff": await runtime.prompts.diff(name, a, b)})


@router.put(
    "/{name}/labels/{label}",
    operation_id="movePromptLabel",
    response_model=None,
    responses={200: ok(LabelOut, "The label, moved (every API process uses it within 1 s)"),
               **errors(400, 401, 403, 404, 409, 413, described=_CHANGERS)},
    openapi_extra=SECURED,
)  # fmt: skip
async def move_label(
    name: NameParam,
    label: Annotated[str, Path(pattern=_LABEL, description="production, staging, ...")],
    payload: LabelMove,
    runtime: RuntimeDep,
    caller: CallerDep,
) -> Response:
    """Point a label at a version by compare-and-swap: of two concurrent moves one gets
    409 ``label_conflict``, as does a move whose ``expected_version`` is not current."""
    require_role(caller, *CHANGE_ROLES)
    info = await runtime.prompts.move_label(
        name, label, payload.version, expected=payload.expected_version, actor=actor_of(caller)
    )
    return _json(info.to_json())
