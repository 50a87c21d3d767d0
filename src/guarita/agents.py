"""Agents declared in config, called with a message and an optional session.

The conversation lives in the session store; each call sends the agent's system prompt
and as much recent history as fits the model's context window next to the new message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from sqlalchemy.exc import SQLAlchemyError

from guarita.errors import AgentNotFound, InvalidRequest, NotFound, ServiceUnavailable
from guarita.ops.prompts import PromptRegistry, RenderedPrompt
from guarita.pipeline import Next
from guarita.settings import AgentSettings, ModelSettings, Settings
from guarita.store.sessions import SessionStore, Turn
from guarita.store.tasks import TaskInfo
from guarita.types import Call, Caller, FallbackLevel, RequestContext, Usage

_TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    """A cheap upper-leaning estimate (about 4 characters a token) for context budgeting."""
    return len(text) // 4 + _TOKENS_PER_MESSAGE


def context_room(agent: AgentSettings, model: ModelSettings) -> int:
    """Tokens of an agent's context window left for the message and history: the window
    minus the answer's room and the system prompt."""
    return model.context_window - agent.max_tokens - estimate_tokens(agent.system_prompt)


def longest_message(agent: AgentSettings, model: ModelSettings) -> int:
    """The longest message, in characters, that the agent takes (see ``estimate_tokens``)."""
    return max(0, 4 * (context_room(agent, model) - _TOKENS_PER_MESSAGE) + 3)


def fit_history(history: list[Turn], budget: int) -> list[Turn]:
    """The newest turns whose estimated size fits ``budget`` tokens, oldest first."""
    kept: list[Turn] = []
    for turn in reversed(history):
        cost = estimate_tokens(turn.content)
        if cost > budget:
            break
        budget -= cost
        kept.append(turn)
    kept.reverse()
    return kept


def _model_and_body(
    agent: AgentSettings, rendered: RenderedPrompt | None
) -> tuple[str, dict[str, Any]]:
    """The model to call and the sampling fields: the agent's, overridden by its prompt
    version's model configuration."""
    body: dict[str, Any] = {"temperature": agent.temperature, "max_tokens": agent.max_tokens}
    if rendered is None:
        return agent.model, body
    config = rendered.version.model_config
    body.update(config.body_fields())
    return config.model or agent.model, body


@dataclass(slots=True, frozen=True)
class ChatResult:
    response: str
    session_id: str
    agent: str
    model: str
    usage: Usage
    cost_usd: float
    request_id: str
    fallback_level: FallbackLevel = FallbackLevel.PRIMARY
    quality: float = 1.0
    response_headers: Mapping[str, str] = field(default_factory=dict)
    """For the HTTP answer (rate-limit headers), not part of the body."""

    def to_json(self) -> dict[str, Any]:
        return {
            "response": self.response,
            "session_id": self.session_id,
            "agent": self.agent,
            "model": self.model,
            "usage": self.usage.to_openai(),
            "cost_usd": self.cost_usd,
            "request_id": self.request_id,
            "fallback_level": self.fallback_level,
            "quality_score": self.quality,
        }


class AgentService:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionStore,
        pipeline: Next,
        *,
        tracer: trace.Tracer,
        deadline: Callable[[str, str | None, float | None], float],
        prompts: PromptRegistry | None = None,
    ) -> None:
        self._deadline = deadline
        self._prompts = prompts
        self._settings = settings
        self._sessions = sessions
        self._pipeline = pipeline
        self._tracer = tracer

    def resolve(self, name: str | None) -> tuple[str, AgentSettings]:
        name = name or self._settings.default_agent
        agent = self._settings.agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self._settings.agents)) or "none"
            raise AgentNotFound(f"agent {name!r} does not exist (known: {known})", param="agent")
        return name, agent

    async def prompt_for(
        self, name: str, agent: AgentSettings, ref: str | None = None
    ) -> RenderedPrompt | None:
        """The agent's registry prompt (or ``ref``, a rollout's candidate), resolved and
        rendered with its variables; None for an agent with an inline system prompt. A
        prompt that does not resolve is a 4xx; a store that cannot be read a 503."""
        ref = ref or agent.prompt
        if ref is None:
            return None
        if self._prompts is None:
            raise ServiceUnavailable(f"agent {name!r}: the prompt registry is not available",
                                     code="prompt_unavailable")  # fmt: skip
        with self._tracer.start_as_current_span("guarita.prompt.resolve") as span:
            try:
                rendered = await self._prompts.render(ref, agent.prompt_variables)
            except (SQLAlchemyError, OSError) as exc:
                raise ServiceUnavailable(
                    f"agent {name!r}: prompt {ref!r} cannot be read now",
                    code="prompt_unavailable", retry_after=1, detail=type(exc).__name__,
                ) from None  # fmt: skip
            version = rendered.version
            attributes: dict[str, str | int] = {"guarita.prompt.name": version.name,
                          "guarita.prompt.version": version.version,
                          "guarita.prompt.hash": version.sha256}  # fmt: skip
            span.set_attributes(attributes)
            trace.get_current_span().set_attributes(attributes)
        return rendered

    async def chat(
        self,
        message: str,
        *,
        caller: Caller,
        request_id: str,
        agent_name: str | None = None,
        session_id: str | None = None,
        endpoint: str = "api.chat",
        context: RequestContext | None = None,
        deadline_ms: float | None = None,
        client_ip: str | None = None,
    ) -> ChatResult:
        name, agent = self.resolve(agent_name)
        history: list[Turn] = []
        if session_id is not None:
            with self._tracer.start_as_current_span("guarita.session.load"):
                found = await self._sessions.owner_and_history(session_id)
            if found is not None:
                owner, history = found
                if owner != caller.key_id:
                    raise NotFound(
                        f"session {session_id!r} does not exist", code="session_not_found"
                    )
        else:
            session_id = uuid.uuid4().hex
        rendered = await self.prompt_for(name, agent)
        messages: list[dict[str, Any]] = []
        if rendered is not None:
            messages.extend(rendered.messages)
        elif agent.system_prompt:
            messages.append({"role": "system", "content": agent.system_prompt})
        model_name, body = _model_and_body(agent, rendered)
        model = self._settings.models[model_name]
        window = model.context_window
        prefix = (
            sum(estimate_tokens(m["content"]) for m in messages)
            if rendered is not None
            else estimate_tokens(agent.system_prompt)
        )
        budget = window - body["max_tokens"] - prefix - estimate_tokens(message)
        if budget < 0:
            raise InvalidRequest(
                f"message too long for agent {name!r}: about {estimate_tokens(message)} tokens, "
                f"the model's context is {window}",
                code="context_length_exceeded",
                param="message",
            )
        messages.extend(
            {"role": t.role, "content": t.content} for t in fit_history(history, budget)
        )
        messages.append({"role": "user", "content": message})
        call = Call(
            request_id=request_id,
            model=model_name,
            body={"messages": messages, **body},
            caller=caller,
            agent=name,
            endpoint=endpoint,
            session_id=session_id,
            context=context,
            deadline=self._deadline(model_name, name, deadline_ms),
            client_ip=client_ip,
        )
        if rendered is not None:
            version = rendered.version
            call.record.prompt_name = version.name
            call.record.prompt_version = version.version
            call.record.prompt_hash = version.sha256
        reply = await self._pipeline(call)
        # the session keeps the turn as the provider saw it: sanitised, and with personal
        # data as placeholders when the agent redacts (the values live for this call only)
        sent = call.messages[-1].get("content") if call.messages else message
        answer = reply.text if call.redactor is None else call.redactor.redact(reply.text)
        with self._tracer.start_as_current_span("guarita.session.append"):
            await self._sessions.append(
                session_id,
                agent=name,
                key_id=caller.key_id,
                turns=[
                    Turn("user", sent if isinstance(sent, str) else message),
                    Turn("assistant", answer),
                ],
            )
        return ChatResult(
            response=reply.text,
            session_id=session_id,
            agent=name,
            model=reply.served_by or model_name,
            usage=reply.usage,
            cost_usd=reply.cost_usd,
            request_id=request_id,
            fallback_level=reply.fallback_level,
            quality=reply.quality,
            response_headers=call.response_headers,
        )

    async def run_task(self, task: TaskInfo) -> dict[str, Any]:
        """Run an accepted task: an agent chat whose caller is the task's submitter."""
        payload = task.payload
        caller = Caller(
            key_id=task.key_id,
            name=str(payload.get("caller_name", "task")),
            tier=str(payload.get("tier", "")),
        )
        result = await self.chat(
            str(payload["message"]),
            caller=caller,
            request_id=f"{task.id}-{task.attempt}",
            agent_name=task.agent,
            session_id=payload.get("session_id"),
            endpoint="task",
        )
        return result.to_json()
