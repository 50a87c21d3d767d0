"""Request bodies. Unknown OpenAI fields are kept (``extra="allow"``) and passed upstream."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

SESSION_ID_PATTERN = r"^[A-Za-z0-9_\-.:]{1,64}$"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str = Field(min_length=1)


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Open):
    include_usage: StrictBool = False


class ChatCompletionRequest(_Open):
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


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float"] | None = None


class AgentChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=100_000)
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    agent: str | None = Field(default=None, min_length=1, max_length=200)


class TaskRequest(AgentChatRequest):
    pass
