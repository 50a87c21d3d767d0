"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp server) by base URL.

The request body is passed on as the caller sent it (only ``model`` is replaced) and the
answer's bytes are passed back untouched: no stage needs to rebuild them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from guarita.errors import UpstreamError, UpstreamTruncated
from guarita.providers.base import BaseProvider
from guarita.providers.http import UpstreamClient, api_key_from_env, sse_data
from guarita.settings import ModelSettings
from guarita.types import Call, Chunk, Completion, Embeddings, Usage

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
            raise self.http.invalid_response("/chat/completions: no choices")
        usage = Usage.from_openai(parsed.get("usage"))
        return Completion(
            body=parsed, usage=usage, model=str(parsed.get("model") or body["model"]), raw=raw
        )

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        body = dict(call.body)
        body["model"] = self.upstream_model
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        saw_usage = finished = False
        chars = 0
        async with self.http.stream_lines("/chat/completions", body) as lines:
            async for line in lines:
                data = sse_data(line)
                if data is None or not data:
                    continue
                if data == "[DONE]":
                    finished = True
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise self.http.invalid_response(f"stream chunk not JSON: {exc}") from exc
                if not isinstance(chunk, dict):
                    raise self.http.invalid_response("stream chunk not a JSON object")
                if "error" in chunk:
                    raise UpstreamError(
                        f"model {self.model_name!r}: the upstream failed mid-stream",
                        detail=f"upstream {self.http.base_url}: {chunk['error']}"[:1000],
                    )
                saw_usage = saw_usage or bool(chunk.get("usage"))
                for choice in chunk.get("choices") or ():
                    chars += len((choice.get("delta") or {}).get("content") or "")
                    finished = finished or bool(choice.get("finish_reason"))
                yield chunk
        if not finished:
            # the connection closed cleanly mid-answer: no [DONE], no finish reason
            raise UpstreamTruncated(
                f"model {self.model_name!r}: the upstream's stream ended mid-answer",
                detail=f"upstream {self.http.base_url}: stream ended without [DONE] "
                f"or a finish reason after {chars} characters",
            )
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
        vectors = self._vectors(parsed.get("data"), len(inputs))
        usage = parsed.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        return Embeddings(
            vectors=vectors,
            usage=Usage(_int(usage.get("prompt_tokens")), 0),
            model=str(parsed.get("model") or self.upstream_model),
        )

    def _vectors(self, data: object, expected: int) -> list[list[float]]:
        """One vector of numbers per input, in input order; anything else is not an
        embeddings answer (a 502, never an empty or partial 200)."""
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise self.http.invalid_response(f"/embeddings: {got} vectors for {expected} inputs")
        by_index: dict[int, list[float]] = {}
        for position, item in enumerate(data):
            vector = item.get("embedding") if isinstance(item, dict) else None
            index = item.get("index", position) if isinstance(item, dict) else None
            if (
                not isinstance(vector, list)
                or not vector
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
                or not isinstance(index, int)
                or not 0 <= index < expected
                or index in by_index
            ):
                raise self.http.invalid_response(f"/embeddings: item {position} is not a vector")
            by_index[index] = vector
        return [by_index[i] for i in range(expected)]

    async def aclose(self) -> None:
        await self.http.aclose()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
