"""Small helpers shared by providers that build OpenAI-shaped answers themselves."""

from __future__ import annotations

import secrets
import time
from typing import Any

from guarita.types import Chunk, Usage


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)  # not uuid4(): its UUID object costs more


def completion_body(
    *, cid: str, model: str, text: str, finish_reason: str | None, usage: Usage
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage.to_openai(),
    }


def chunk(
    *,
    cid: str,
    model: str,
    content: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    reasoning: str | None = None,
) -> Chunk:
    """An OpenAI ``chat.completion.chunk``; with ``usage`` it is the final usage chunk."""
    body: Chunk = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage.to_openai()
        return body
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return body


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
