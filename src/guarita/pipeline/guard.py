"""The guard stages: :class:`InputGuard` before the cache, :class:`OutputGuard` just above
the fallback chain (docs/guard.md).

InputGuard, on every chat call: control characters out and Unicode normalised
(:mod:`guarita.guard.sanitise`), the per-message length and the messages-per-request
limits (each refusal a 400 naming the field), then prompt-injection screening (``block``
is a 400 ``prompt_injection_detected``; ``flag`` answers with the verdict in the record and
``x-guarita-injection``), then personal data: ``block`` is a 400 ``pii_detected``;
``redact`` swaps each value for a placeholder before anything below sees the request —
the cache, the provider, the record — and, on the way back, puts the values back into
the answer, per chunk for a stream. Embeddings inputs are sanitised and their personal
data blocked or redacted (nothing to restore).

OutputGuard, on the answers the fallback chain brings back (so a cached answer was scanned
when it was made): code blocks scanned (:mod:`guarita.guard.codescan`) with a risk score
in ``x-guarita-code-risk`` and the record; in ``block`` mode, an answer at or over
``block_at`` is withheld with ``finish_reason: "content_filter"`` — for a stream, the text
of an open code block is held back until the block is scanned, so a blocked block never
reaches the caller; ``review`` records it for review. Personal data the model wrote
itself is reported in the record, or masked (``[EMAIL]``).

Every verdict goes to ``call.record.guard`` as kinds, counts, scores and rule names,
never a value. Detectors are built once, at start, only when a policy uses them.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from guarita.errors import ConfigError, InjectionDetected, InvalidRequest, PiiBlocked
from guarita.guard.sanitise import Sanitiser
from guarita.pipeline import Next
from guarita.settings import (
    CodeGuardSettings,
    InjectionGuardSettings,
    InputGuardSettings,
    PiiGuardSettings,
    Settings,
)
from guarita.types import Call, Chunk, Completion, Reply

if TYPE_CHECKING:  # the detectors need the guard extra
    from guarita.guard.codescan import CodeScanner, CodeScanPolicy, StreamingCodeScanner
    from guarita.guard.injection import InjectionDetector, InjectionPolicy, InjectionVerdict
    from guarita.guard.pii import PiiScanner, Redactor

log = structlog.get_logger("guarita.guard")

INJECTION_HEADER = "x-guarita-injection"
CODE_RISK_HEADER = "x-guarita-code-risk"
BLOCKED_HEADER = "x-guarita-blocked"
_VERDICT_CACHE = 4096
"""Injection verdicts kept by text digest: a conversation resends its history each turn."""
_CALLER_SET = frozenset({"user", "tool", "system"})
"""Roles whose messages the length limit applies to (a model's own answers are exempt)."""


@dataclass(frozen=True, slots=True)
class AgentGuard:
    """One agent's resolved guard settings (its own over the global ones)."""

    input: InputGuardSettings
    injection: InjectionGuardSettings
    pii: PiiGuardSettings
    code: CodeGuardSettings
    system_prompt: str = ""

    @property
    def output_on(self) -> bool:
        return self.code.mode != "off" or (self.pii.mode != "off" and self.pii.output != "off")


def _need_extra(what: str) -> ConfigError:
    return ConfigError(f'{what} needs the guard extra: pip install "guarita[guard]"')


class Guards:
    """The detectors (built once, shared by every agent) and each agent's settings."""

    def __init__(self, settings: Settings) -> None:
        self._default = AgentGuard(
            settings.guard.input, settings.guard.injection, settings.guard.pii, settings.guard.code
        )
        self._agents: dict[str, AgentGuard] = {}
        for name, agent in settings.agents.items():
            own = agent.guard
            g = settings.guard
            self._agents[name] = AgentGuard(
                input=(own.input if own and own.input else g.input),
                injection=(own.injection if own and own.injection else g.injection),
                pii=(own.pii if own and own.pii else g.pii),
                code=(own.code if own and own.code else g.code),
                system_prompt=agent.system_prompt,
            )
        every = [self._default, *self._agents.values()]
        self.detector: InjectionDetector | None = None
        self.injection_policies: dict[InjectionGuardSettings, InjectionPolicy] = {}
        self.pii_scanners: dict[tuple[Any, ...], PiiScanner] = {}
        self.code_scanners: dict[bool, CodeScanner] = {}
        self.code_policies: dict[CodeGuardSettings, CodeScanPolicy] = {}
        if any(a.injection.mode != "off" for a in every):
            self._load_injection(every)
        if any(a.pii.mode != "off" for a in every):
            self._load_pii(every)
        if any(a.code.mode != "off" for a in every):
            self._load_code(every)
        self._verdicts: OrderedDict[bytes, InjectionVerdict] = OrderedDict()

    def _load_injection(self, every: list[AgentGuard]) -> None:
        try:
            from guarita.guard.injection import InjectionDetector, InjectionPolicy
        except ImportError as exc:
            raise _need_extra("guard.injection") from exc
        self.detector = InjectionDetector()
        for a in every:
            self.injection_policies[a.injection] = InjectionPolicy(
                mode=a.injection.mode,
                threshold=a.injection.threshold,
                roles=frozenset(a.injection.roles),
            )

    def _load_pii(self, every: list[AgentGuard]) -> None:
        try:
            from guarita.guard.pii import ALL_KINDS, PiiConfig, PiiScanner
        except (ImportError, ConfigError) as exc:
            raise _need_extra("guard.pii") from exc
        for a in every:
            key = _pii_key(a.pii)
            if key not in self.pii_scanners:
                kinds = frozenset(a.pii.kinds) if a.pii.kinds else ALL_KINDS
                config = PiiConfig(kinds=kinds, phone_region=a.pii.phone_region)
                self.pii_scanners[key] = PiiScanner(config)

    def _load_code(self, every: list[AgentGuard]) -> None:
        try:
            from guarita.guard.codescan import CodeScanConfig, CodeScanner, CodeScanPolicy
        except ImportError as exc:
            raise _need_extra("guard.code") from exc
        for a in every:
            if a.code.mode != "off" and a.code.bandit not in self.code_scanners:
                self.code_scanners[a.code.bandit] = CodeScanner(
                    CodeScanConfig(use_bandit=a.code.bandit)
                )
            self.code_policies[a.code] = CodeScanPolicy(
                mode=a.code.mode, block_at=a.code.block_at, review_at=a.code.review_at
            )

    @property
    def output_on(self) -> bool:
        """Some agent (or the default) scans answers: the OutputGuard stage is needed."""
        return self._default.output_on or any(a.output_on for a in self._agents.values())

    def of(self, agent: str | None) -> AgentGuard:
        return self._agents.get(agent or "", self._default) if agent else self._default

    def pii_scanner(self, policy: PiiGuardSettings) -> PiiScanner:
        return self.pii_scanners[_pii_key(policy)]

    def injection_verdict(self, text: str) -> InjectionVerdict:
        """The detector's verdict on ``text``, remembered by digest (LRU)."""
        assert self.detector is not None
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        verdict = self._verdicts.get(digest)
        if verdict is not None:
            self._verdicts.move_to_end(digest)
            return verdict
        verdict = self.detector.score(text)
        self._verdicts[digest] = verdict
        if len(self._verdicts) > _VERDICT_CACHE:
            self._verdicts.popitem(last=False)
        return verdict


def _pii_key(policy: PiiGuardSettings) -> tuple[Any, ...]:
    return (tuple(sorted(policy.kinds or ())), policy.phone_region)


# -- message texts ---------------------------------------------------------------------


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def longest_text(message: dict[str, Any]) -> int:
    """The length of a message's longest text: its content, or its longest text part."""
    content = message.get("content")
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return max(
            (
                len(p["text"])
                for p in content
                if isinstance(p, dict) and isinstance(p.get("text"), str)
            ),
            default=0,
        )
    return 0


def map_texts(
    message: dict[str, Any], fn: Callable[[str], str], *, tool_arguments: bool = False
) -> dict[str, Any]:
    """A copy of ``message`` with ``fn`` applied to each text: the content or its text
    parts, and with ``tool_arguments`` the arguments of its tool calls."""
    out = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = fn(content)
    elif isinstance(content, list):
        out["content"] = [
            {**p, "text": fn(p["text"])}
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
    if tool_arguments and isinstance(message.get("tool_calls"), list):
        out["tool_calls"] = [_map_arguments(c, fn) for c in message["tool_calls"]]
    return out


def _map_arguments(tool_call: Any, fn: Callable[[str], str]) -> Any:
    if not isinstance(tool_call, dict):
        return tool_call
    function = tool_call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return tool_call
    return {**tool_call, "function": {**function, "arguments": fn(function["arguments"])}}


def kind_counts(redactor: Redactor) -> dict[str, int]:
    """Placeholders issued, by kind (``{"card": 1, "email": 2}``)."""
    return dict(Counter(p[1:].rpartition("_")[0].lower() for p in redactor.placeholders()))


Verdict = Callable[[str, str, str], None]
"""Counts a verdict: (guard, action, agent)."""


def _guard_note(call: Call, name: str, value: dict[str, Any], count: Verdict | None = None) -> None:
    if call.record.guard is None:
        call.record.guard = {}
    call.record.guard[name] = value
    action = value.get("action")
    if count is not None and action and action not in ("allow", "annotate"):
        count(name, str(action), call.agent or "direct")


# -- InputGuard -------------------------------------------------------------------------


class InputGuard:
    def __init__(self, guards: Guards, on_verdict: Verdict | None = None) -> None:
        self._guards = guards
        self._count = on_verdict
        self._sanitisers: dict[InputGuardSettings, Sanitiser] = {}

    def _sanitiser(self, settings: InputGuardSettings) -> Sanitiser:
        found = self._sanitisers.get(settings)
        if found is None:
            found = self._sanitisers[settings] = Sanitiser(
                settings.normalization, settings.strip_invisible
            )
        return found

    async def __call__(self, call: Call, next: Next) -> Reply:
        redactor = self.prepare(call)
        reply = await next(call)
        if redactor is not None:
            restore(reply, redactor)
        return reply

    def prepare(self, call: Call) -> Redactor | None:
        """Check and rewrite the call's body; raise the refusals. Returns the redactor
        when values were redacted (also in ``call.redactor``). A task's submission calls
        this too, so that what is stored is what the provider will see."""
        guard = self._guards.of(call.agent)
        if call.operation == "embeddings":
            self._embeddings(call, guard)
            return None
        messages = self._sanitised(call, guard)
        if guard.injection.mode != "off":
            self._screen(call, guard, messages)
        redactor: Redactor | None = None
        if guard.pii.mode != "off":
            scanner = self._guards.pii_scanner(guard.pii)
            if guard.pii.mode == "block":
                self._block_pii(call, scanner, messages)
            else:
                from guarita.guard.pii import Redactor

                redactor = Redactor(scanner)
                messages = [map_texts(m, redactor.redact, tool_arguments=True) for m in messages]
                if redactor.placeholders():
                    _guard_note(
                        call,
                        "pii",
                        {"action": "redact", "kinds": kind_counts(redactor)},
                        self._count,
                    )
                    call.redactor = redactor
                else:
                    redactor = None
        call.body = {**call.body, "messages": messages}
        return redactor

    def _sanitised(self, call: Call, guard: AgentGuard) -> list[dict[str, Any]]:
        limits = guard.input
        messages = call.messages
        agent_turn = call.endpoint in ("api.chat", "task")
        if not agent_turn and len(messages) > limits.max_messages:
            raise InvalidRequest(
                f"messages: {len(messages)} messages, at most {limits.max_messages} are "
                f"accepted per request",
                code="too_many_messages",
                param="messages",
            )
        sanitiser = self._sanitiser(limits)
        removed = 0
        out: list[dict[str, Any]] = []
        last = len(messages) - 1
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                out.append(message)
                continue
            role = message.get("role")
            checked = role in _CALLER_SET and not (agent_turn and index != last)
            if checked and role == "system" and message.get("content") == guard.system_prompt:
                checked = False  # the agent's own system prompt, from the config
            if checked:
                size = longest_text(message)
                if size > limits.max_message_chars:
                    field = "message" if agent_turn else f"messages[{index}].content"
                    raise InvalidRequest(
                        f"{field}: {size} characters, at most {limits.max_message_chars} "
                        f"are accepted per message",
                        code="message_too_long",
                        param=field,
                    )
            count = 0

            def clean(text: str) -> str:
                nonlocal count
                cleaned, n = sanitiser.clean(text)
                count += n
                return cleaned

            out.append(map_texts(message, clean))
            removed += count
        if removed:
            _guard_note(call, "input", {"removed_chars": removed})
        return out

    def _screen(self, call: Call, guard: AgentGuard, messages: list[dict[str, Any]]) -> None:
        policy = self._guards.injection_policies[guard.injection]
        worst: InjectionVerdict | None = None
        worst_index = -1
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not policy.scans(str(message.get("role"))):
                continue
            text = message_text(message)
            if not text:
                continue
            verdict = self._guards.injection_verdict(text)
            if worst is None or verdict.score > worst.score:
                worst, worst_index = verdict, index
        if worst is None:
            return
        assert self._guards.detector is not None
        limit = (
            policy.threshold if policy.threshold is not None else self._guards.detector.threshold
        )
        action = policy.mode if worst.score >= limit else "allow"
        _guard_note(call, "injection", {
            "action": action, "score": round(worst.score, 4), "message": worst_index,
            "reasons": list(worst.reasons),
        }, self._count)  # fmt: skip
        if action == "allow":
            return
        summary = "; ".join([f"score={worst.score:.2f}", *worst.reasons])
        if action == "block":
            field = (
                "message" if call.endpoint in ("api.chat", "task") else f"messages[{worst_index}]"
            )
            raise InjectionDetected(
                f"{field}: the request was refused as a likely prompt injection or jailbreak",
                param=field,
                detail=f"injection {summary}",
            )
        call.response_headers[INJECTION_HEADER] = f"flag; {summary}"
        log.info("injection_flagged", request_id=call.request_id, agent=call.agent,
                 score=round(worst.score, 4), reasons=list(worst.reasons))  # fmt: skip

    def _block_pii(self, call: Call, scanner: PiiScanner, messages: list[dict[str, Any]]) -> None:
        agent_turn = call.endpoint in ("api.chat", "task")
        # an agent's session turns were checked when they came: its new message only
        checked = messages[-1:] if agent_turn else messages
        texts = [message_text(m) for m in checked if isinstance(m, dict)]
        self._refuse_pii(call, scanner, texts, "message" if agent_turn else "messages")

    def _refuse_pii(self, call: Call, scanner: PiiScanner, texts: list[str], param: str) -> None:
        """A 400 ``pii_detected`` naming the kinds found in ``texts`` (never a value), noted
        as the call's verdict; nothing when there are none."""
        kinds = {f.kind for text in texts for f in scanner.scan(text)}
        if kinds:
            _guard_note(call, "pii", {"action": "block", "kinds": sorted(kinds)}, self._count)
            raise PiiBlocked(kinds, param=param)

    def _embeddings(self, call: Call, guard: AgentGuard) -> None:
        sanitiser = self._sanitiser(guard.input)
        inputs = [sanitiser.clean(text)[0] for text in call.inputs]
        if guard.pii.mode != "off":
            scanner = self._guards.pii_scanner(guard.pii)
            if guard.pii.mode == "block":
                self._refuse_pii(call, scanner, inputs, "input")
            else:
                counts: Counter[str] = Counter()
                masked = []
                for text in inputs:
                    findings = scanner.scan(text)
                    counts.update(f.kind for f in findings)
                    masked.append(scanner.mask(text) if findings else text)
                inputs = masked
                if counts:
                    _guard_note(
                        call, "pii", {"action": "redact", "kinds": dict(counts)}, self._count
                    )
        call.body = {**call.body, "input": inputs}


def restore(reply: Reply, redactor: Redactor) -> None:
    """Put the redacted values back into the answer the caller gets: the whole body of a
    complete answer, or each chunk of a stream as it passes."""
    if reply.source is not None:
        reply.source = _restored_stream(reply.source, redactor)
        return
    if reply.completion is None:
        return
    body = dict(reply.completion.body)
    choices = []
    for choice in body.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            choice = {**choice, "message": map_texts(
                choice["message"], redactor.restore, tool_arguments=True)}  # fmt: skip
        choices.append(choice)
    body["choices"] = choices
    completion = Completion(body=body, usage=reply.completion.usage, model=reply.completion.model)
    reply.completion = completion
    reply.text = completion.text


async def _restored_stream(
    source: AsyncIterator[Chunk], redactor: Redactor
) -> AsyncIterator[Chunk]:
    from guarita.guard.pii import StreamRestorer

    restorers: dict[tuple[Any, ...], StreamRestorer] = {}

    def fed(key: tuple[Any, ...], text: str) -> str:
        restorer = restorers.get(key)
        if restorer is None:
            restorer = restorers[key] = redactor.restore_stream()
        return restorer.feed(text)

    try:
        async for chunk in source:
            for choice in chunk.get("choices") or ():
                index = choice.get("index", 0)
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    if isinstance(delta.get("content"), str) and delta["content"]:
                        delta["content"] = fed((index,), delta["content"])
                    for call in delta.get("tool_calls") or ():
                        function = call.get("function") if isinstance(call, dict) else None
                        if isinstance(function, dict) and isinstance(
                            function.get("arguments"), str
                        ):
                            key = (index, call.get("index", 0))
                            function["arguments"] = fed(key, function["arguments"])
                if choice.get("finish_reason"):
                    _flush_choice(choice, index, restorers)
            yield chunk
    finally:
        await _close(source)


def _flush_choice(
    choice: dict[str, Any], index: Any, restorers: dict[tuple[Any, ...], Any]
) -> None:
    """What the restorers of ``index`` still hold goes out in its finishing chunk."""
    delta = choice.setdefault("delta", {})
    for key in [k for k in restorers if k[0] == index]:
        held = restorers.pop(key).flush()
        if not held:
            continue
        if len(key) == 1:
            delta["content"] = held + (delta.get("content") or "")
        else:
            delta.setdefault("tool_calls", []).append(
                {"index": key[1], "function": {"arguments": held}}
            )


async def _close(source: AsyncIterator[Chunk]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


# -- OutputGuard ------------------------------------------------------------------------


class OutputGuard:
    def __init__(self, guards: Guards, on_verdict: Verdict | None = None) -> None:
        self._guards = guards
        self._count = on_verdict

    async def __call__(self, call: Call, next: Next) -> Reply:
        reply = await next(call)
        guard = self._guards.of(call.agent)
        if call.operation != "chat" or not guard.output_on:
            return reply
        if reply.source is not None:
            reply.source = self._stream(call, guard, reply.source)
        elif reply.completion is not None:
            self._complete(call, guard, reply)
        return reply

    def _pii_out(self, guard: AgentGuard) -> PiiScanner | None:
        if guard.pii.mode == "off" or guard.pii.output == "off":
            return None
        return self._guards.pii_scanner(guard.pii)

    def _complete(self, call: Call, guard: AgentGuard, reply: Reply) -> None:
        assert reply.completion is not None
        text = reply.completion.text
        if not text:
            return
        blocked = False
        scanner = self._guards.code_scanners.get(guard.code.bandit)
        if scanner is not None and guard.code.mode != "off":
            report = scanner.scan(text)
            if report.blocks:
                blocked = self._decide(call, guard, report)
        pii = self._pii_out(guard)
        masked: str | None = None
        if pii is not None and not blocked:
            findings = pii.scan(text)
            if findings:
                kinds = dict(Counter(f.kind for f in findings))
                _guard_note(
                    call, "pii_output", {"action": guard.pii.output, "kinds": kinds}, self._count
                )
                if guard.pii.output == "mask":
                    masked = pii.mask(text)
        if blocked:
            _replace_content(reply, "", finish_reason="content_filter")
            call.response_headers[BLOCKED_HEADER] = "code"
        elif masked is not None:
            _replace_content(reply, masked)

    def _decide(self, call: Call, guard: AgentGuard, report: Any) -> bool:
        """Record the scan and its verdict; True when the answer must be withheld."""
        policy = self._guards.code_policies[guard.code]
        verdict = policy.decide(report)
        note = report.to_record()
        note["action"] = verdict.action
        _guard_note(call, "code", note, self._count)
        call.response_headers.update(verdict.headers)
        if verdict.action in ("block", "review"):
            log.info("code_risk", request_id=call.request_id, agent=call.agent,
                     action=verdict.action, score=round(verdict.score, 3),
                     reason=verdict.reason)  # fmt: skip
        return verdict.action == "block"

    async def _stream(
        self, call: Call, guard: AgentGuard, source: AsyncIterator[Chunk]
    ) -> AsyncIterator[Chunk]:
        code = None
        scanner = self._guards.code_scanners.get(guard.code.bandit)
        if scanner is not None and guard.code.mode != "off":
            code = scanner.stream()
        watch = _StreamWatch(call, guard, code, self._pii_out(guard))
        try:
            async for chunk in source:
                out = watch.passed(chunk)
                if out is not None:
                    yield out
            rest = watch.rest()
            if rest is not None:
                yield rest
        finally:
            await _close(source)
        if code is not None:
            report = code.finish()
            if report.blocks:
                self._decide(call, guard, report)
        if watch.pii_kinds:
            note = {"action": guard.pii.output, "kinds": dict(watch.pii_kinds)}
            _guard_note(call, "pii_output", note, self._count)


class _StreamWatch:
    """OutputGuard over one stream, chunk by chunk (the first choice's text).

    Code: every chunk's text goes to the streaming scanner; in ``block`` mode the text of
    an open code block is held back until the block is complete and scanned, and once
    the risk reaches ``block_at`` the stream is cut with ``finish_reason:
    "content_filter"`` (what the model still sends is read for its usage, not shown).
    Personal data the model writes: scanned per complete line; with ``mask`` the line is
    held until it ends, then sent masked.
    """

    def __init__(
        self, call: Call, guard: AgentGuard, code: StreamingCodeScanner | None,
        pii: PiiScanner | None,
    ) -> None:  # fmt: skip
        self._code = code
        self._holding = code is not None and guard.code.mode == "block"
        self._block_at = guard.code.block_at
        self._pii = pii
        self._mask = pii is not None and guard.pii.output == "mask"
        self._held = ""
        self._line = ""
        self.pii_kinds: Counter[str] = Counter()
        self.cut = False
        self._cid, self._model = "chatcmpl-filtered", call.model

    def passed(self, chunk: Chunk) -> Chunk | None:
        """What goes out for ``chunk``: itself (its text perhaps changed), the cut, or
        nothing."""
        if self.cut:
            return {**chunk, "choices": []} if chunk.get("usage") else None
        self._cid = chunk.get("id") or self._cid
        self._model = chunk.get("model") or self._model
        choices = chunk.get("choices") or ()
        choice = choices[0] if choices and isinstance(choices[0], dict) else None
        delta = choice.get("delta") if choice is not None else None
        if not isinstance(delta, dict):
            return chunk
        content = delta.get("content")
        text = content if isinstance(content, str) else ""
        finishing = bool(choice and choice.get("finish_reason"))
        if self._code is not None:
            if text:
                self._code.feed(text)
            if self._holding:
                if finishing:
                    self._code.finish()
                if self._code.score >= self._block_at:
                    self.cut = True
                    return _filtered_chunk(self._cid, self._model)
                if self._code.in_block and not finishing:
                    self._held, text = self._held + text, ""
                else:
                    text, self._held = self._held + text, ""
        text = self._scanned(text, finishing)
        if text or "content" in delta:
            delta["content"] = text
        return chunk

    def rest(self) -> Chunk | None:
        """A last chunk for text still held when the stream ended without finishing."""
        if self.cut or not (self._held or (self._mask and self._line)):
            return None
        text = self._scanned(self._held, True)
        self._held = ""
        return {"id": self._cid, "object": "chat.completion.chunk", "model": self._model,
                "choices": [{"index": 0, "delta": {"content": text}}]}  # fmt: skip

    def _scanned(self, text: str, final: bool) -> str:
        if self._pii is None:
            return text
        self._line += text
        if final:
            done, self._line = self._line, ""
        else:
            head, sep, self._line = self._line.rpartition("\n")
            done = head + sep
        findings = self._pii.scan(done) if done else []
        self.pii_kinds.update(f.kind for f in findings)
        if not self._mask:
            return text
        return self._pii.mask(done) if findings else done


def _filtered_chunk(cid: str, model: str) -> Chunk:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}],
    }


def _replace_content(reply: Reply, text: str, *, finish_reason: str | None = None) -> None:
    assert reply.completion is not None
    body = dict(reply.completion.body)
    choices = list(body.get("choices") or [{}])
    first = dict(choices[0])
    first["message"] = {**(first.get("message") or {"role": "assistant"}), "content": text}
    if finish_reason is not None:
        first["finish_reason"] = finish_reason
        reply.finish_reason = finish_reason
    choices[0] = first
    body["choices"] = choices
    reply.completion = Completion(
        body=body, usage=reply.completion.usage, model=reply.completion.model
    )
    reply.text = text
