"""Request and response bodies.

Requests are validated: unknown OpenAI fields are kept (``extra="allow"``) and passed
upstream. Responses are only described, for the OpenAPI schema (``api/openapi.py``): the
handlers write their bodies themselves and nothing validates them on the way out.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

SESSION_ID_PATTERN = r"^[A-Za-z0-9_\-.:]{1,64}$"
MAX_JSON_DEPTH = 128
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
"""The integers every encoder takes (orjson: int64 and uint64)."""


def _json_problem(value: Any) -> str | None:
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "is not valid Unicode (it has an unpaired surrogate, such as \\ud800)"
    elif isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        return "is an integer outside the 64-bit range"
    return None


def check_json_body(data: Any) -> Any:
    """Refuse what JSON parsing lets through but no provider, store or encoder can take:
    unpaired surrogates (``"\\ud800"``), integers beyond 64 bits, and nesting deeper than
    ``MAX_JSON_DEPTH``; in any field, the unknown ones passed upstream included."""
    # (value, depth, where): ``where`` is a linked (parent, key) chain, joined only on error.
    stack: list[tuple[Any, int, Any]] = [(data, 0, None)]
    while stack:
        value, depth, where = stack.pop()
        problem: str | None = None
        if depth > MAX_JSON_DEPTH:
            problem = f"is nested more than {MAX_JSON_DEPTH} levels deep"
        elif isinstance(value, dict):
            for key, item in value.items():
                if _json_problem(key) is not None:
                    problem = "has a field name that is not valid Unicode"
                    break
                stack.append((item, depth + 1, (where, key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (where, i)) for i, item in enumerate(value))
        else:
            problem = _json_problem(value)
        if problem is not None:
            keys: list[str] = []
            while where is not None:
                where, key = where
                keys.append(str(key))
            param = ".".join(reversed(keys)) or "body"
            if len(param) > 100:
                param = param[:100] + "…"
            raise PydanticCustomError(
                "invalid_json_value", "{param}: {problem}", {"param": param, "problem": problem}
            )
    return data


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integral = BeforeValidator(_integral)
"""With ``Strict()``: an integer as JSON Schema means it, ``2`` or ``2.0``, never ``true``
or ``"2"``. It goes after the bounds in ``Annotated`` for them to reach the schema."""


_TokenCount = Annotated[int, Strict(), Field(ge=1, le=1_000_000), Integral]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Request(_Open):
    """A top-level request body: checked whole before its fields (see ``check_json_body``)."""

    @model_validator(mode="before")
    @classmethod
    def _sound_json(cls, data: Any) -> Any:
        return check_json_body(data)


class ContentPart(_Open):
    type: str = Field(min_length=1)
    text: str | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Open):
    include_usage: StrictBool = False


class ChatCompletionRequest(_Request):
    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # Numbers as the schema says: lax pydantic would also take true as 1 and "0.5" as 0.5.
    temperature: StrictFloat | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | None = Field(default=None, ge=0, le=1)
    max_tokens: _TokenCount | None = None
    max_completion_tokens: _TokenCount | None = None
    n: Annotated[int, Strict(), Field(ge=1, le=10), Integral] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Strict(), Field(ge=INT_MIN, le=INT_MAX), Integral] | None = None
    user: str | None = Field(default=None, max_length=256)

    def provider_body(self) -> dict[str, Any]:
        """The fields a provider sends on: everything the caller set but model and stream."""
        return self.model_dump(exclude_none=True, exclude={"model", "stream", "stream_options"})


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] = Field(
        min_length=1,
        # what min_length checks, per branch: the generated schema applies it to strings only
        json_schema_extra={
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        },
    )
    encoding_format: Literal["float", "base64"] | None = None


class AgentChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(  # the pattern says for the schema what _no_nul checks
        min_length=1, max_length=100_000, json_schema_extra={"pattern": "^[^\\x00]*$"}
    )
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    agent: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _sound_json(cls, data: Any) -> Any:
        return check_json_body(data)

    @field_validator("message")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        # Sessions and tasks store the message; PostgreSQL text cannot hold U+0000.
        if "\x00" in value:
            raise PydanticCustomError("nul_character", "must not contain NUL characters (U+0000)")
        return value


class TaskRequest(AgentChatRequest):
    pass


# -- Responses ----------------------------------------------------------------------------
# OpenAI's shapes are open (``_Open``): upstream answers pass through with their own fields.


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, on every route, in OpenAI's format."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class CompletionUsage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(_Open):
    role: str
    content: str | None = None


class ChatCompletionChoice(_Open):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None = None


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None = None


class ChunkDelta(_Open):
    role: str | None = None
    content: str | None = None


class ChatCompletionChunkChoice(_Open):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None


class ChatCompletionChunk(_Open):
    """One `data:` event of a streamed answer; with `include_usage`, the last one carries
    only `usage`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: CompletionUsage | None = None


class ModelCard(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Open):
    object: Literal["list"]
    data: list[ModelCard]


class EmbeddingUsage(_Open):
    prompt_tokens: int
    total_tokens: int


class Embedding(_Open):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="floats, or with encoding_format=base64 their little-endian float32 bytes"
    )


class EmbeddingList(_Open):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class AgentChatResponse(BaseModel):
    response: str
    session_id: str
    agent: str
    model: str = Field(description="the configured model that answered")
    usage: CompletionUsage
    cost_usd: float
    request_id: str
    fallback_level: str = Field(description="primary, deployment, model, rules or static")
    quality_score: float


class TaskAccepted(BaseModel):
    task_id: str
    status: Literal["queued"]


class TaskError(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | SkipJsonSchema[None] = None


class TaskStatus(BaseModel):
    task_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    agent: str
    attempts: int = Field(description="attempts that ended (succeeded or failed)")
    deliveries: int = Field(description="times a worker took the task up")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: AgentChatResponse | SkipJsonSchema[None] = None
    error: TaskError | SkipJsonSchema[None] = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """`ready` when every check passes; more figures (such as `records_pending`) may
    appear next to the checks."""

    model_config = ConfigDict(extra="allow")

    ready: bool
    checks: dict[str, bool]


class BreakerSnapshot(_Open):
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    window_calls: int
    window_failures: int
    opened_at: float


class DeploymentStatus(BaseModel):
    name: str
    provider: str
    weight: float
    outstanding: int
    retries_refused_by_budget: int
    breaker: BreakerSnapshot | None


class ModelStatus(BaseModel):
    balancing: str
    fallbacks: list[str]
    deployments: list[DeploymentStatus]


class BreakerReport(BaseModel):
    models: dict[str, ModelStatus]


class UsageCounts(BaseModel):
    requests: int
    errors: int = Field(description="calls that ended in an error")
    input_tokens: int
    output_tokens: int
    cost_usd: float


class UsageRow(UsageCounts):
    """One group: the dimensions of `by`, and only those, then the counts."""

    key_id: str | None = Field(None, description="null: anonymous local development calls")
    agent: str | None = Field(None, description="null: calls made to a model directly")
    model: str | SkipJsonSchema[None] = Field(
        None, description="the model that answered (after fallbacks)"
    )
    day: date | SkipJsonSchema[None] = Field(None, description="the UTC day")


class EconomyReport(BaseModel):
    """What the answering process knows: budget scopes (`key:<id>`, `agent:<name>`,
    `total`) in economy mode and lifted by an operator, each with its end (epoch s)."""

    economy: dict[str, float]
    lifted: dict[str, float]


class CacheReport(BaseModel):
    """The response cache: its entries (every process's when they live in Redis) and the
    answering process's lookups."""

    enabled: bool = Field(description="Whether any model or agent caches its answers")
    store: Literal["process", "redis"]
    entries: int
    lookups: dict[str, int] = Field(
        description="This process's lookups: hit, semantic-hit, miss, bypass"
    )
    hit_ratio: float | None = Field(description="Hits over hits and misses; null before any")
    saved_usd: float = Field(description="What this process's hits saved")
    semantic: dict[str, Any] | None = Field(
        default=None,
        description="The semantic tier, when a policy uses it: embedder, judge (its name, or "
        "rules), threshold, questions indexed in this process, candidates rejected by reason "
        "(the judge's, judge_busy, or the verifier's), the embedding cache's size, hits and "
        "misses",
    )


class CacheClear(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(
        default=None,
        pattern=r"^(key:(key_[0-9a-f]{1,32}|anonymous)|agent:[^\s]{1,200})$",
        description="`key:<key id>` or `agent:<name>`; absent: every entry",
    )


class CacheCleared(BaseModel):
    cleared: int = Field(description="Entries dropped")


class EconomyLift(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget: str = Field(
        pattern=r"^(key:key_[0-9a-f]{1,32}|agent:[^\s]{1,200}|total)$",
        description="The budget scope: `key:<key id>`, `agent:<name>` or `total`",
    )


class UsageReport(BaseModel):
    since: datetime
    until: datetime
    by: list[Literal["key", "agent", "model", "day"]]
    rows: list[UsageRow]
    total: UsageCounts = Field(description="every record in the window, rows left out included")
    truncated: bool = Field(description="whether `limit` left rows out")
    economy: EconomyReport = Field(description="budgets in economy mode or lifted, now")


class AuditEntryObject(BaseModel):
    """One audit log entry (docs/audit.md)."""

    seq: int = Field(description="Its place in the chain, from 1, without gaps")
    entry_id: str
    created_at: str = Field(description="UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ`")
    category: Literal["access", "data", "change"]
    action: str = Field(description="e.g. `auth.failed`, `admin.usageReport`, `data.read`")
    actor: str = Field(description="A key id, `anonymous`, a key's short prefix, `cli:<user>`")
    target: str | None
    outcome: Literal["success", "denied", "failure"]
    request_id: str | None
    client_ip: str | None
    details: dict[str, Any] | None = Field(description="Never a prompt, personal data or a key")
    prev_hash: str = Field(description="The previous entry's `hash` (64 zeros for the first)")
    hash: str = Field(description="SHA-256 of the entry's canonical JSON with `prev_hash`")


class AuditList(BaseModel):
    object: Literal["list"]
    data: list[AuditEntryObject]
    has_more: bool = Field(description="whether more entries match: pass `last_seq` as `after`")
    last_seq: int | None = Field(description="the `seq` of the last entry here")


# -- The Batch API (OpenAI's shapes) ------------------------------------------------------


class FileObject(_Open):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int = Field(description="Unix seconds")
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(_Open):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(_Open):
    id: str
    object: Literal["file"]
    deleted: bool


_METADATA_KEY = Annotated[str, Field(max_length=64)]
_METADATA_VALUE = Annotated[str, Field(max_length=512)]


class BatchCreateRequest(_Request):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    completion_window: str = Field(min_length=1, max_length=20, examples=["24h"])
    metadata: dict[_METADATA_KEY, _METADATA_VALUE] | None = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = Field(
        default=None, description="Accepted and ignored: files are kept until deleted"
    )


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str | None
    message: str | None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"]
    data: list[BatchError]


class BatchObject(_Open):
    id: str
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                    "cancelling", "cancelled"]  # fmt: skip
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None


class BatchList(_Open):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
