"""Who we talk to and how: one pooled HTTP client per upstream, and the mapping of
upstream failures onto our error hierarchy. Wire formats live in the provider modules."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from guarita.errors import (
    ConfigError,
    GuaritaError,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamInvalidResponse,
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
    """A pooled aiohttp session for one upstream base URL.

    aiohttp rather than httpx on this hot path: measured in ``bench/README.md``, httpx's
    connection pool cost 1.7-6.8 ms of CPU per proxied call against 0.14-0.37 ms here.
    The session is created on first use, inside the event loop that serves requests.
    """

    def __init__(
        self, model_name: str, settings: ModelSettings, *, base_url: str, headers: dict[str, str]
    ) -> None:
        self.model_name = model_name
        self.base_url = base_url.rstrip("/")
        self.key_env = settings.api_key_env
        self._headers = {**headers, "content-type": "application/json"}
        # connect and read timeouts, not a total one: a long stream may run past timeout_s
        # as long as chunks keep coming (the request's deadline bounds the whole call)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=connector,
                raise_for_status=False,
            )
        return self._session

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """POST a JSON body; return the parsed answer and its raw bytes."""
        try:
            async with self._client().post(
                self.base_url + path, data=orjson.dumps(body)
            ) as response:
                content = await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc) from exc
        if status >= 400:
            raise self._status_error(status, content, headers)
        try:
            parsed = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise self.invalid_response(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(parsed, dict):
            raise self.invalid_response(f"{path}: a JSON {type(parsed).__name__}, not an object")
        return parsed, content

    @asynccontextmanager
    async def stream_lines(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[str]]:
        """POST a JSON body and yield the answer's lines (SSE) once the status is known good."""
        try:
            response = await self._client().post(self.base_url + path, data=orjson.dumps(body))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc) from exc
        try:
            if response.status >= 400:
                content = await response.read()
                raise self._status_error(response.status, content, response.headers)
            yield self._lines(response)
        finally:
            response.release()

    async def _lines(self, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
        try:
            async for raw in response.content:
                yield raw.decode("utf-8", errors="replace").rstrip("\r\n")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(
                f"model {self.model_name!r}: the upstream broke off the stream",
                detail=f"upstream {self.base_url}: {type(exc).__name__}: {exc}",
            ) from exc

    def invalid_response(self, what: str) -> UpstreamInvalidResponse:
        """The upstream answered, but not with what its API documents."""
        return UpstreamInvalidResponse(
            f"model {self.model_name!r}: the upstream sent an invalid answer",
            detail=f"upstream {self.base_url}: {what}",
        )

    def _transport_error(self, exc: BaseException) -> GuaritaError:
        detail = f"upstream {self.base_url}: {type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"model {self.model_name!r}: the upstream timed out",
                                   detail=detail)  # fmt: skip
        return UpstreamUnavailable(f"model {self.model_name!r}: the upstream is unreachable",
                                   detail=detail)  # fmt: skip

    def _status_error(
        self, status: int, content: bytes, headers: Mapping[str, str]
    ) -> GuaritaError:
        """Callers learn the model and a stable code; the upstream's URL, status and words
        go to the log (``detail``). Only a request the upstream refused as invalid passes its
        message on: it tells the caller what to change."""
        message = _upstream_message(content)
        detail = f"upstream {self.base_url} answered {status}: {message}"
        model = f"model {self.model_name!r}"
        if status in (401, 403):
            hint = f" (check the key in {self.key_env})" if self.key_env else ""
            return UpstreamAuthFailed(f"{model}: the upstream refused Guarita's credentials",
                                      detail=detail + hint)  # fmt: skip
        if status == 429:
            return UpstreamRateLimited(
                f"{model}: rate limited by the upstream",
                retry_after=_retry_after(headers),
                detail=detail,
            )
        if status in (400, 413, 422):
            return InvalidRequest(f"{model}: the upstream refused the request: {message}",
                                  code="upstream_rejected_request", detail=detail)  # fmt: skip
        return UpstreamError(f"{model}: the upstream failed", detail=detail)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


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


def _retry_after(headers: Mapping[str, str]) -> float | None:
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
