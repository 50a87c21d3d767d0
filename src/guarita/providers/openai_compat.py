"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp server) by base URL.

The request body is passed on as the caller sent it (only ``model`` is replaced) and the
answer's bytes are passed back untouched: no stage needs to rebuild them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from guarita.errors import UpstreamError
from guarita.providers.base import BaseProvider, Embeddings
from guarita.providers.http import UpstreamClient, api_key_from_env, sse_data
from guarita.settings import ModelSettings
from guarita.types import Call, Chunk, Completion, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAICompatProvider(BaseProvider):
    name = "openai"

    def __init__(self, model_name: str, settings: ModelSettings) -> None:
        super().__init__(model_name, settings)
        key = api_key_from_env(model_name, settings, required=False)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = UpstreamClient(
            model_name, settings, base_url=settings.base_url or DEFAULT_BASE_URL, headers=headers
        )

    async def complete(self, call: Call) -> Completion:
        body = dict(call.body)
        body["model"] = self.upstream_model
        parsed, raw = await self.http.post_json("/chat/completions", body)
        if not isinstance(parsed.get("choices"), list):
            raise UpstreamError(f"upstream {self.http.base_url} answered without choices")
        usage = Usage.from_openai(parsed.get("usage"))
        return Completion(
            body=parsed, usage=usage, model=str(parsed.get("model") or body["model"]), raw=raw
        )

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        body = dict(call.body)
        body["model"] = self.upstream_model
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        saw_usage = False
        chars = 0
        async with self.http.stream_lines("/chat/completions", body) as lines:
            async for line in lines:
                data = sse_data(line)
                if data is None or not data:
                    continue
                if data == "[DONE]":
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamError("upstream sent an invalid stream chunk") from exc
                if "error" in chunk:
                    raise UpstreamError(f"upstream stream failed: {chunk['error']}")
                saw_usage = saw_usage or bool(chunk.get("usage"))
                for choice in chunk.get("choices") or ():
                    chars += len((choice.get("delta") or {}).get("content") or "")
                yield chunk
        if not saw_usage:
            # Some servers ignore include_usage; estimate (about 4 characters a token)
            # rather than record a free call.
            prompt = sum(len(str(m.get("content") or "")) for m in call.messages)
            yield {
                "id": "usage-estimate",
                "object": "chat.completion.chunk",
                "choices": [],
                "model": self.upstream_model,
                "usage": Usage(prompt // 4 + 1, chars // 4 + 1).to_openai(),
            }

    async def embed(self, inputs: list[str]) -> Embeddings:
        parsed, _ = await self.http.post_json(
            "/embeddings", {"model": self.upstream_model, "input": inputs}
        )
        data = sorted(parsed.get("data") or [], key=lambda item: item.get("index", 0))
        usage = parsed.get("usage") or {}
        return Embeddings(
            vectors=[item["embedding"] for item in data],
            usage=Usage(int(usage.get("prompt_tokens") or 0), 0),
            model=str(parsed.get("model") or self.upstream_model),
        )

    async def aclose(self) -> None:
        await self.http.aclose()
