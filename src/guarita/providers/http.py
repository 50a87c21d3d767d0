"""Who we talk to and how: one pooled HTTP client per upstream, and the mapping of
upstream failures onto our error hierarchy. Wire formats live in the provider modules."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from guarita.errors import (
    ConfigError,
    GuaritaError,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from guarita.settings import ModelSettings


def api_key_from_env(model_name: str, settings: ModelSettings, *, required: bool) -> str | None:
    """Read the key named by ``api_key_env``; fail at start, naming the variable, if unset."""
    var = settings.api_key_env
    if var is None:
        if required:
            raise ConfigError(
                f"models.{model_name}.api_key_env: required for provider {settings.provider}"
            )
        return None
    value = os.environ.get(var, "").strip()
    if not value:
        raise ConfigError(
            f"environment variable {var} is not set; model {model_name!r} "
            f"(provider {settings.provider}) needs its API key there"
        )
    return value


class UpstreamClient:
    """A pooled ``httpx.AsyncClient`` for one upstream base URL."""

    def __init__(
        self, model_name: str, settings: ModelSettings, *, base_url: str, headers: dict[str, str]
    ) -> None:
        self.model_name = model_name
        self.base_url = base_url.rstrip("/")
        self.key_env = settings.api_key_env
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """POST a JSON body; return the parsed answer and its raw bytes."""
        try:
            response = await self._client.post(
                path, content=orjson.dumps(body), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content, response.headers)
        try:
            parsed = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"upstream {self.base_url} answered with invalid JSON") from exc
        if not isinstance(parsed, dict):
            raise UpstreamError(f"upstream {self.base_url} answered with a non-object JSON body")
        return parsed, response.content

    @asynccontextmanager
    async def stream_lines(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[str]]:
        """POST a JSON body and yield the answer's lines (SSE) once the status is known good."""
        request = self._client.build_request(
            "POST", path, content=orjson.dumps(body), headers={"content-type": "application/json"}
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        try:
            if response.status_code >= 400:
                content = await response.aread()
                raise self._status_error(response.status_code, content, response.headers)
            yield self._lines(response)
        finally:
            await response.aclose()

    async def _lines(self, response: httpx.Response) -> AsyncIterator[str]:
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    def _transport_error(self, exc: httpx.HTTPError) -> GuaritaError:
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"upstream {self.base_url} timed out ({type(exc).__name__})")
        return UpstreamUnavailable(f"upstream {self.base_url} unreachable: {type(exc).__name__}")

    def _status_error(self, status: int, content: bytes, headers: httpx.Headers) -> GuaritaError:
        detail = _upstream_message(content)
        where = f"upstream {self.base_url} answered {status}"
        if status in (401, 403):
            hint = f"; check the key in {self.key_env}" if self.key_env else ""
            return UpstreamAuthFailed(f"{where}: credentials rejected{hint}")
        if status == 429:
            return UpstreamRateLimited(f"{where}: {detail}", retry_after=_retry_after(headers))
        if status in (400, 413, 422):
            return InvalidRequest(f"{where}: {detail}", code="upstream_rejected_request")
        return UpstreamError(f"{where}: {detail}")

    async def aclose(self) -> None:
        await self._client.aclose()


def _upstream_message(content: bytes) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode(errors="replace") or "no detail"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return "no detail"


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def sse_data(line: str) -> str | None:
    """The payload of an SSE ``data:`` line, or None for other lines."""
    if line.startswith("data:"):
        return line[5:].strip()
    return None
