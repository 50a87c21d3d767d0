"""The lean path of ``POST /v1/chat/completions`` for the requests the response cache may
answer.

A cache hit calls no model, so what it costs is the HTTP stack around it, and FastAPI's
request handling (``solve_dependencies``, its body reading and validation wrappers, the
endpoint run through them) was the largest part (``bench/README.md``, "Response cache").
:class:`CachedChatPath`, middleware in front of the router, answers a request whose body
parses and validates and whose model or agent caches it with the code the route runs (the
same pydantic model validates it; :func:`~guarita.api.openai.answer_chat` authenticates
it, runs the pipeline and writes the answer; :func:`~guarita.api.errors.error_response`
renders its errors, as the app's handler does), without FastAPI in between. Anything else
(a body that does not parse or validate, an unknown model, a model or temperature the
cache leaves out) goes to the route unchanged, which answers it, errors included, as
before.
"""

from __future__ import annotations

from collections import OrderedDict

import orjson
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guarita.api import openai
from guarita.api.errors import error_response
from guarita.api.openai import ChatTarget, answer_chat, chat_target
from guarita.api.schemas import ChatCompletionRequest
from guarita.errors import GuaritaError, ModelNotFound
from guarita.runtime import Runtime

CHAT_PATH = "/v1/chat/completions"
VALIDATED_BODIES = 256
VALIDATED_BODY_BYTES = 16 * 1024

_Validated = tuple[ChatCompletionRequest, str, str | None, bytes]
"""A validated request, its model and agent, and its provider body as JSON."""


class CachedChatPath:
    """ASGI middleware in front of the router: answers what the response cache may answer
    (see the module docstring) and passes everything else on, as it came."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self._runtime = runtime
        self._route = _chat_route()
        self._validated: OrderedDict[bytes, _Validated] = OrderedDict()
        """Bodies seen lately and what validating them gave (see ``_cacheable``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHAT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages = await _read_body(receive)
        whole = messages[-1]["type"] == "http.request"
        found = self._cacheable(scope, messages[0].get("body", b"")) if whole else None
        if found is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        payload, target = found
        scope["route"] = self._route  # what the access log's metric and span are named by
        request = Request(scope, receive, send)
        try:
            response = await answer_chat(request, payload, target)
        except GuaritaError as exc:  # as the app's handler answers it (api/errors.py)
            response = error_response(exc)
        await response(scope, receive, send)

    def _cacheable(
        self, scope: Scope, body: bytes
    ) -> tuple[ChatCompletionRequest, ChatTarget] | None:
        """The validated request and what it calls, if the cache may answer it; None for
        anything the route should see as it is.

        What validating a body gives depends on the body and the settings alone, and an
        exact hit is the same body again: the result for the last ``VALIDATED_BODIES``
        bodies (of at most ``VALIDATED_BODY_BYTES``) is kept, and a body seen again gets a
        fresh copy of its provider body (the stages may change it) from the JSON kept."""
        if not _is_json(scope):
            return None
        known = self._validated.get(body)
        if known is not None:
            self._validated.move_to_end(body)
            payload, model, agent, provider_body = known
            return payload, (model, agent, orjson.loads(provider_body))
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        try:
            payload = ChatCompletionRequest.model_validate(data)
            target = chat_target(self._runtime, payload)
        except (ValidationError, ModelNotFound):
            return None
        model, agent, call_body = target
        if self._runtime.cache.chat_policy(model, agent, call_body) is None:
            return None
        if len(body) <= VALIDATED_BODY_BYTES:
            self._validated[body] = (payload, model, agent, orjson.dumps(call_body))
            if len(self._validated) > VALIDATED_BODIES:
                self._validated.popitem(last=False)
        return payload, target


def _chat_route() -> APIRoute:
    for route in openai.router.routes:
        if isinstance(route, APIRoute) and route.path == CHAT_PATH:
            return route
    raise LookupError(f"no {CHAT_PATH} route")  # pragma: no cover - the router has it


def _is_json(scope: Scope) -> bool:
    """``Content-Type: application/json`` (what else FastAPI reads as JSON goes to it)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json"
    return False


async def _read_body(receive: Receive) -> list[Message]:
    """The request's messages up to the end of its body (or a disconnect)."""
    messages = [await receive()]
    while messages[-1]["type"] == "http.request" and messages[-1].get("more_body", False):
        messages.append(await receive())
    if len(messages) > 1 and messages[-1]["type"] == "http.request":
        whole = b"".join(m.get("body", b"") for m in messages)
        messages = [{"type": "http.request", "body": whole, "more_body": False}]
    return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` as if nothing had been read: the messages read first, then the rest."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
