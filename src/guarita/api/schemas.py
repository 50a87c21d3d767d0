"""Request bodies. Unknown OpenAI fields are kept (``extra="allow"``) and passed upstream."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from pydantic_core import PydanticCustomError

SESSION_ID_PATTERN = r"^[A-Za-z0-9_\-.:]{1,64}$"
MAX_JSON_DEPTH = 128
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _json_problem(value: Any) -> str | None:
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "is not valid Unicode (it has an unpaired surrogate, such as \\ud800)"
    elif (
        isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX
    ):
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
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    n: int | None = Field(default=None, ge=1, le=10)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)

    def provider_body(self) -> dict[str, Any]:
        """The fields a provider sends on: everything the caller set but model and stream."""
        return self.model_dump(exclude_none=True, exclude={"model", "stream", "stream_options"})


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] | None = None


class AgentChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=100_000)
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
