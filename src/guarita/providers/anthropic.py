"""Anthropic's Messages API, translated to and from the OpenAI chat shapes.

The HTTP side (pooled client, key header, error mapping) is the shared ``UpstreamClient``;
this module only knows the wire format: system prompt apart, ``max_tokens`` required,
content blocks in the answer, and the streaming events ``message_start`` →
``content_block_delta`` … → ``message_delta`` (stop reason, output tokens) → ``message_stop``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from guarita.errors import InvalidRequest, UpstreamError, UpstreamTruncated
from guarita.providers.base import BaseProvider
from guarita.providers.common import chunk, completion_body, message_text
from guarita.providers.http import UpstreamClient, api_key_from_env, sse_data
from guarita.settings import ModelSettings
from guarita.types import Call, Chunk, Completion, Usage

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


class AnthropicProvider(BaseProvider):
    name = "anthropic"

    def __init__(self, model_name: str, settings: ModelSettings) -> None:
        super().__init__(model_name, settings)
        key = api_key_from_env(model_name, settings, required=True)
        assert key is not None
        self.http = UpstreamClient(
            model_name,
            settings,
            base_url=settings.base_url or DEFAULT_BASE_URL,
            headers={"x-api-key": key, "anthropic-version": API_VERSION},
        )

    def to_messages_request(self, call: Call, *, stream: bool) -> dict[str, Any]:
        """Translate an OpenAI chat request into a Messages API request."""
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for message in call.messages:
            role = message.get("role")
            if role in ("system", "developer"):
                system.append(message_text(message))
            elif role in ("user", "assistant"):
                messages.append({"role": role, "content": message_text(message)})
            else:
                raise InvalidRequest(
                    f"messages: role {role!r} is not supported by Anthropic models",
                    param="messages",
                )
        body = call.body
        request: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": messages,
            "max_tokens": body.get("max_tokens")
            or body.get("max_completion_tokens")
            or DEFAULT_MAX_TOKENS,
        }
        if system:
            request["system"] = "\n\n".join(system)
        for name in ("temperature", "top_p"):
            if body.get(name) is not None:
                request[name] = body[name]
        stop = body.get("stop")
        if stop:
            request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if isinstance(body.get("thinking"), dict):  # extended thinking, as Anthropic spells it
            request["thinking"] = body["thinking"]
        if stream:
            request["stream"] = True
        return request

    async def complete(self, call: Call) -> Completion:
        parsed, _ = await self.http.post_json(
            "/messages", self.to_messages_request(call, stream=False)
        )
        blocks = parsed.get("content")
        if not isinstance(blocks, list):
            raise self.http.invalid_response("/messages: no content blocks")
        text = "".join(
            b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
        )
        thinking = "".join(
            str(b.get("thinking") or "")
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "thinking"
        )
        tool_calls = [
            _tool_call(b) for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"
        ]
        raw_usage = parsed.get("usage") or {}
        usage = Usage(
            int(raw_usage.get("input_tokens") or 0), int(raw_usage.get("output_tokens") or 0)
        )
        model = str(parsed.get("model") or self.upstream_model)
        body = completion_body(
            cid=str(parsed.get("id") or "msg"),
            model=model,
            text=text,
            finish_reason=_FINISH.get(str(parsed.get("stop_reason")), "stop"),
            usage=usage,
        )
        # the OpenAI-compatible names for what the OpenAI shape has no field of its own for
        message = body["choices"][0]["message"]
        if thinking:
            message["reasoning_content"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        return Completion(body=body, usage=usage, model=model)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        request = self.to_messages_request(call, stream=True)
        cid, model = "msg", self.upstream_model
        input_tokens = output_tokens = tools = 0
        stopped = False
        async with self.http.stream_lines("/messages", request) as lines:
            async for line in lines:
                data = sse_data(line)
                if not data:
                    continue
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise self.http.invalid_response(f"stream event not JSON: {exc}") from exc
                if not isinstance(event, dict):
                    raise self.http.invalid_response("stream event not a JSON object")
                kind = event.get("type")
                if kind == "message_start":
                    message = event.get("message") or {}
                    cid = str(message.get("id") or cid)
                    model = str(message.get("model") or model)
                    input_tokens = int((message.get("usage") or {}).get("input_tokens") or 0)
                    yield chunk(cid=cid, model=model, role="assistant", content="")
                elif kind in ("content_block_start", "content_block_delta"):
                    out, tools = _block_chunk(event, cid, model, tools)
                    if out is not None:
                        yield out
                elif kind == "message_delta":
                    usage = event.get("usage") or {}
                    output_tokens = int(usage.get("output_tokens") or output_tokens)
                    reason = (event.get("delta") or {}).get("stop_reason")
                    yield chunk(
                        cid=cid, model=model, finish_reason=_FINISH.get(str(reason), "stop")
                    )
                elif kind == "error":
                    raise UpstreamError(
                        f"model {self.model_name!r}: the upstream failed mid-stream",
                        detail=f"Anthropic stream error: {event.get('error')}"[:1000],
                    )
                elif kind == "message_stop":
                    stopped = True
                    break
        if not stopped:
            raise UpstreamTruncated(
                f"model {self.model_name!r}: the upstream's stream ended mid-answer",
                detail="Anthropic stream ended without message_stop",
            )
        yield chunk(cid=cid, model=model, usage=Usage(input_tokens, output_tokens))

    async def aclose(self) -> None:
        await self.http.aclose()


def _tool_call(block: dict[str, Any], arguments: str | None = None) -> dict[str, Any]:
    """An Anthropic ``tool_use`` block as an OpenAI tool call (arguments as JSON text)."""
    if arguments is None:
        arguments = orjson.dumps(block.get("input") or {}).decode()
    return {
        "id": str(block.get("id") or ""),
        "type": "function",
        "function": {"name": str(block.get("name") or ""), "arguments": arguments},
    }


def _tool_chunk(cid: str, model: str, index: int, part: dict[str, Any]) -> Chunk:
    """A chunk whose delta carries one fragment of tool call ``index``."""
    out = chunk(cid=cid, model=model)
    out["choices"][0]["delta"]["tool_calls"] = [{"index": index, **part}]
    return out


def _block_chunk(
    event: dict[str, Any], cid: str, model: str, tools: int
) -> tuple[Chunk | None, int]:
    """The chunk for one content-block event (text, thinking, a tool call's start or a piece
    of its arguments), and the number of tool calls begun so far."""
    if event.get("type") == "content_block_start":
        block = event.get("content_block") or {}
        if block.get("type") != "tool_use":
            return None, tools
        return _tool_chunk(cid, model, tools, _tool_call(block, arguments="")), tools + 1
    delta = event.get("delta") or {}
    kind = delta.get("type")
    if kind == "text_delta":
        return chunk(cid=cid, model=model, content=str(delta.get("text", ""))), tools
    if kind == "thinking_delta":
        return chunk(cid=cid, model=model, reasoning=str(delta.get("thinking", ""))), tools
    if kind == "input_json_delta" and tools:
        part = {"function": {"arguments": str(delta.get("partial_json", ""))}}
        return _tool_chunk(cid, model, tools - 1, part), tools
    return None, tools
