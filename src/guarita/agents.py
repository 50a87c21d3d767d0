"""Agents declared in config, called with a message and an optional session.

The conversation lives in the session store; each call sends the agent's system prompt
and as much recent history as fits the model's context window next to the new message.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from sqlalchemy.exc import SQLAlchemyError

from guarita.errors import (
    AgentNotFound,
    GuaritaError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from guarita.ops.prompts import PromptRegistry, RenderedPrompt
from guarita.ops.rollout_samples import Observation, answered_by_its_model
from guarita.ops.rollouts import RolloutService, Route
from guarita.ops.shadow import SHADOW_CALLER, ShadowJob
from guarita.pipeline import Next
from guarita.settings import AgentSettings, ModelSettings, Settings
from guarita.store.sessions import SessionStore, Turn
from guarita.store.tasks import TaskInfo
from guarita.types import Call, Caller, FallbackLevel, Reply, RequestContext, Usage

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


def _note_prompt(call: Call, rendered: RenderedPrompt | None) -> None:
    if rendered is not None:
        version = rendered.version
        call.record.prompt_name = version.name
        call.record.prompt_version = version.version
        call.record.prompt_hash = version.sha256


Mirror = Callable[["Route", Call, Reply, str, list[Turn]], bool]
"""(route, live call, live reply, message, history sent) -> offered to the shadow runner."""


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
        rollouts: RolloutService | None = None,
        samples: Callable[[Observation], None] | None = None,
        mirror: Mirror | None = None,
    ) -> None:
        """``rollouts``: the arm of each request of an agent in a rollout; ``samples``:
        where a canary's samples go; ``mirror``: where a shadow's live requests go."""
        self._rollouts = rollouts
        self._samples = samples
        self._mirror = mirror
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
        route = None
        if self._rollouts is not None:
            route = await self._rollouts.route(
                name, session_id=session_id, key_id=caller.key_id, request_id=request_id
            )
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
        rendered = await self.prompt_for(name, agent, route.prompt_ref if route else None)
        model_name, body, sent_history = self._request(
            name, agent, rendered, history, message, model=route.model if route else None
        )
        call = Call(
            request_id=request_id,
            model=model_name,
            body=body,
            caller=caller,
            agent=name,
            endpoint=endpoint,
            session_id=session_id,
            context=context,
            deadline=self._deadline(model_name, name, deadline_ms),
            client_ip=client_ip,
        )
        _note_prompt(call, rendered)
        if route is not None:
            call.record.variant = route.variant
            call.record.rollout_id = route.rollout.id
        try:
            reply = await self._pipeline(call)
        except GuaritaError as exc:
            if route is not None:
                self._observe(route, call, None, exc)
            raise
        if route is not None:
            self._observe(route, call, reply, None)
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
        if route is not None and route.mirrored and self._mirror is not None:
            self._mirror(route, call, reply, message, sent_history)
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

    def _request(
        self, name: str, agent: AgentSettings, rendered: RenderedPrompt | None,
        history: list[Turn], message: str, *, model: str | None = None,
    ) -> tuple[str, dict[str, Any], list[Turn]]:  # fmt: skip
        """The model to call, the body (prompt, the history that fits, the message) and
        the history sent."""
        messages: list[dict[str, Any]] = []
        if rendered is not None:
            messages.extend(rendered.messages)
        elif agent.system_prompt:
            messages.append({"role": "system", "content": agent.system_prompt})
        model_name, body = _model_and_body(agent, rendered)
        model_name = model or model_name
        window = self._settings.models[model_name].context_window
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
        kept = fit_history(history, budget)
        messages.extend({"role": t.role, "content": t.content} for t in kept)
        messages.append({"role": "user", "content": message})
        return model_name, {"messages": messages, **body}, kept

    def _observe(
        self, route: Route, call: Call, reply: Reply | None, error: GuaritaError | None
    ) -> None:
        """A canary stage's sample of this request (none in shadow, or for a 4xx: the
        caller's doing, not the variant's)."""
        if self._samples is None or route.mirrored:
            return
        if error is not None and error.status_code < 500:
            return
        ok = reply is not None and answered_by_its_model(reply)
        record = call.record
        latency = record.latency_ms or (time.perf_counter() - call.started) * 1000
        self._samples(Observation(
            rollout_id=route.rollout.id, agent=route.rollout.agent, stage=route.stage,
            variant=route.variant, request_id=call.request_id, ok=ok, latency_ms=latency,
            quality=reply.quality if reply is not None else None,
            consistency=record.consistency,
            input_tokens=reply.usage.input_tokens if reply is not None else 0,
            output_tokens=reply.usage.output_tokens if reply is not None else 0,
            cost_usd=reply.cost_usd if reply is not None else 0.0,
            messages=tuple(call.messages), answer=reply.text if reply is not None else "",
        ))  # fmt: skip

    async def mirror(
        self, job: ShadowJob, prompt_ref: str | None, model: str | None, endpoint: str
    ) -> Reply:
        """Run a live request again on ``prompt_ref``/``model`` for the shadow: an internal
        call (charged to no key), its record marked ``shadow``; no session is read or
        written."""
        name, agent = self.resolve(job.agent)
        rendered = await self.prompt_for(name, agent, prompt_ref)
        history = [Turn(role, content) for role, content in job.history]
        model_name, body, _ = self._request(name, agent, rendered, history, job.message,
                                            model=model)  # fmt: skip
        call = Call(
            request_id=f"{job.request_id}-{endpoint.rsplit('.', 1)[-1]}",
            model=model_name, body=body, caller=SHADOW_CALLER, agent=name, endpoint=endpoint,
            deadline=self._deadline(model_name, name, None),
        )  # fmt: skip
        _note_prompt(call, rendered)
        call.record.variant = "shadow"
        call.record.rollout_id = job.route.rollout.id
        return await self._pipeline(call)

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
