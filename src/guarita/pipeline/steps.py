"""Steps: each chat call's reasoning and tool steps into the reasoning log
(``request_steps``, docs/observability.md).

Runs just inside Recording. What a call's steps are, in order:

1. the tool steps of its current turn, the request messages after the last user message
   that is not itself a tool result: assistant ``tool_calls`` (and Anthropic ``tool_use``
   blocks) as ``tool_call``, role ``tool`` messages (and ``tool_result`` blocks) as
   ``tool_result``;
2. the answer's reasoning (``reasoning_content``, Anthropic thinking) as ``reasoning``;
3. the answer's tool calls as ``tool_call``.

Every stored text goes through the guard's PII scanner (masked as ``[EMAIL]``, ``[CARD]``…,
irreversibly) and is cut to ``steps.max_chars`` (``truncated`` says so), in the finish
hook, so no value in clear reaches the writer's queue or its spool files. A chat without
tool messages or reasoning costs a pass over its messages' roles; bench/README.md §24
measures the cost of one with steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from guarita.pipeline import Next
from guarita.providers.common import message_text
from guarita.settings_steps import StepSettings
from guarita.store.steps import StepWriter
from guarita.types import Call, Reply

if TYPE_CHECKING:
    from guarita.guard.pii import PiiScanner


class Step(NamedTuple):
    kind: str
    name: str | None
    call_id: str | None
    content: str


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return "" if content is None else orjson.dumps(content, default=str).decode()


def _blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _openai_call(call: Any) -> Step | None:
    if not isinstance(call, dict):
        return None
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    arguments = function.get("arguments")
    return Step("tool_call", str(function.get("name") or "") or None,
                str(call.get("id") or "") or None, _text(arguments))  # fmt: skip


def _current_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user" and not _blocks(message, "tool_result"):
            return messages[index + 1 :]
    return messages


def request_steps(messages: list[dict[str, Any]]) -> Iterator[Step]:
    """The tool steps of the request's current turn, in order."""
    names: dict[str, str] = {}
    for message in _current_turn(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            for step in map(_openai_call, calls if isinstance(calls, list) else ()):
                if step is not None:
                    names[step.call_id or ""] = step.name or ""
                    yield step
            for block in _blocks(message, "tool_use"):
                name, call_id = block.get("name"), block.get("id")
                step = Step("tool_call", str(name or "") or None, str(call_id or "") or None,
                            _text(block.get("input")))  # fmt: skip
                names[step.call_id or ""] = step.name or ""
                yield step
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "") or None
            name = message.get("name") or names.get(call_id or "")
            yield Step("tool_result", name or None, call_id, message_text(message))
        elif role == "user":
            for block in _blocks(message, "tool_result"):
                call_id = str(block.get("tool_use_id") or "") or None
                yield Step("tool_result", names.get(call_id or "") or None, call_id,
                           _text(block.get("content")))  # fmt: skip


def answer_steps(reply: Reply, *, reasoning: bool, tools: bool) -> Iterator[Step]:
    """The answer's reasoning, then its tool calls."""
    if reasoning and reply.reasoning:
        yield Step("reasoning", None, None, reply.reasoning)
    if tools:
        for call in reply.tool_calls:
            step = _openai_call(call)
            if step is not None:
                yield step


class StepCapture:
    def __init__(self, settings: StepSettings, writer: StepWriter) -> None:
        from guarita.guard.pii import PiiScanner  # the guard extra, only when enabled

        self._settings = settings
        self._writer = writer
        self._scanner: PiiScanner = PiiScanner()

    async def __call__(self, call: Call, next: Next) -> Reply:
        if call.operation != "chat":
            return await next(call)
        try:
            reply = await next(call)
        except BaseException:
            self.capture(call, None)
            raise
        reply.on_finish(lambda done, error: self.capture(call, None if error else done))
        return reply

    def capture(self, call: Call, reply: Reply | None) -> None:
        """Queue the call's steps (masked, cut) for the writer."""
        s = self._settings
        steps: list[Step] = []
        if s.tools:
            steps.extend(request_steps(call.messages))
        if reply is not None:
            steps.extend(answer_steps(reply, reasoning=s.reasoning, tools=s.tools))
        record = call.record
        for index, step in enumerate(steps):
            self._writer.add(self.row(record.record_id, record.request_id, index, step)
                             | {"created_at": record.created_at})  # fmt: skip

    def row(self, record_id: str, request_id: str, index: int, step: Step) -> dict[str, Any]:
        """One step as its ``request_steps`` row, without its time."""
        limit = self._settings.max_chars
        content = self._mask(step.content)
        name = self._mask(step.name)[:200] if step.name else None
        return {
            "step_id": f"{record_id}-{index}",
            "record_id": record_id,
            "request_id": request_id,
            "step_index": index,
            "kind": step.kind,
            "name": name,
            "call_id": self._mask(step.call_id)[:100] if step.call_id else None,
            "content": content[:limit],
            "truncated": len(content) > limit,
        }

    def _mask(self, text: str) -> str:
        return self._scanner.mask(text.replace("\x00", ""))
