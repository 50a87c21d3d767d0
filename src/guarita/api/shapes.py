"""OpenAI request and answer shapes shared by the HTTP handlers and the Batch API's lines
(``batches/lines.py``), which must answer a line exactly as the route would: which model a
requested name means, an agent's defaults, the embeddings answer. Nothing here knows the
runtime, so the batch runner can use it without an import cycle.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from guarita.errors import ModelNotFound
from guarita.settings import Settings
from guarita.types import Embeddings


def resolve_model(settings: Settings, name: str) -> tuple[str, str | None]:
    """(model, agent) for a requested name: a configured model, else a configured agent."""
    if name in settings.models:
        return name, None
    agent = settings.agents.get(name)
    if agent is not None:
        return agent.model, name
    raise ModelNotFound(f"The model {name!r} does not exist", param="model")


def apply_agent(settings: Settings, agent_name: str, body: dict[str, Any]) -> None:
    """An agent called as a model: its system prompt unless the caller sent one, and its
    sampling defaults where the caller set none."""
    agent = settings.agents[agent_name]
    messages = body["messages"]
    if agent.system_prompt and not any(m.get("role") in ("system", "developer") for m in messages):
        body["messages"] = [{"role": "system", "content": agent.system_prompt}, *messages]
    body.setdefault("temperature", agent.temperature)
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = agent.max_tokens


def embeddings_body(result: Embeddings, encoding_format: str | None) -> dict[str, Any]:
    """OpenAI's embeddings answer: one vector per input, in order."""
    encode = _base64_floats if encoding_format == "base64" else None
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v) if encode else v}
            for i, v in enumerate(result.vectors)
        ],
        "model": result.model,
        "usage": {
            "prompt_tokens": result.usage.input_tokens,
            "total_tokens": result.usage.input_tokens,
        },
    }


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's ``encoding_format=base64``: little-endian float32s (the SDK's default)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
