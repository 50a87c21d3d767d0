"""The prompt registry: named prompts with immutable versions, and labels moved by
compare-and-swap, resolved by agents as ``name``, ``name@label`` or ``name@N``.

Resolution is cached in each process. A version (``name@3``) never changes, so it is kept;
a label is kept ``ttl_s`` at most (1 s or less), and a move empties every process's label
cache at once through the shared state's broadcast (``prompts`` channel). The TTL is the
backstop for what no announcement reaches (a move on the same SQLite file by the CLI, or a
lost message: publish delivers at most once), so every API process uses a moved label
within 1 s.
"""

from __future__ import annotations

import builtins
import difflib
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from guarita.errors import InvalidRequest
from guarita.ops.prompt_render import (
    ModelConfig,
    PromptVersion,
    content_hash,
    parse_template,
    template_variables,
)
from guarita.state import Broadcast
from guarita.state.listener import Listener
from guarita.store.prompts import LabelInfo, PromptStore, PromptSummary, not_found

__all__ = ["DEFAULT_LABEL", "ModelConfig", "PromptRegistry", "PromptVersion", "RenderedPrompt"]

log = structlog.get_logger("guarita.prompts")

DEFAULT_LABEL = "production"
CHANNEL = "prompts"
"""Where a label move is announced to every process."""
MAX_TTL_S = 1.0
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
PROMPT_LABEL_MOVED = "guarita.prompt.label_moved"
PROMPT_PUSHED = "guarita.prompt.pushed"

Audit = Callable[..., None]
"""``AuditLog.record``'s shape: (category, action, actor, target, outcome, details=...)."""
Publish = Callable[[str, dict[str, Any]], None]


def parse_ref(ref: str) -> tuple[str, str | int]:
    """``name`` (its ``production`` label), ``name@label`` or ``name@N``."""
    name, at, pin = ref.partition("@")
    if not NAME.fullmatch(name):
        raise InvalidRequest(f"prompt {ref!r}: not a prompt name", param="prompt")
    if not at:
        return name, DEFAULT_LABEL
    if pin.isdigit() and int(pin) > 0:
        return name, int(pin)
    if not LABEL.fullmatch(pin):
        raise InvalidRequest(f"prompt {ref!r}: not a label or version number", param="prompt")
    return name, pin


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A resolved version and its messages with the variables filled in."""

    version: PromptVersion
    messages: list[dict[str, str]]


class PromptRegistry:
    def __init__(
        self, store: PromptStore, *, models: Collection[str] | None = None,
        broadcast: Broadcast | None = None, ttl_s: float = 0.5, audit: Audit | None = None,
        publish: Publish | None = None,
    ) -> None:  # fmt: skip
        """``models``: the configured ones (a version naming another is refused);
        ``broadcast``: where label moves are announced and heard."""
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S}]")
        self.store = store
        self._models = frozenset(models) if models is not None else None
        self._broadcast = broadcast
        self._ttl = ttl_s
        self._audit = audit
        self._publish = publish
        self._versions: dict[tuple[str, int], PromptVersion] = {}
        self._labels: dict[tuple[str, str], tuple[float, PromptVersion]] = {}
        self._generation = 0
        self._listener = (
            Listener(broadcast, CHANNEL, self._announced, on_subscribed=self.invalidate)
            if broadcast is not None
            else None
        )

    async def start(self) -> None:
        """Listen for label moves announced by other processes."""
        if self._listener is not None:
            await self._listener.start()

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()

    def invalidate(self) -> None:
        """Forget every cached label (versions never change)."""
        self._generation += 1
        self._labels.clear()

    def cached_labels(self) -> builtins.list[str]:
        """The label refs this process holds now (for ``/admin`` and tests)."""
        return [f"{name}@{label}" for name, label in self._labels]

    def _announced(self, _message: bytes) -> None:
        self.invalidate()

    async def resolve(self, ref: str) -> PromptVersion:
        """The version ``ref`` names now; NotFound (``prompt_not_found``) or InvalidRequest."""
        name, pin = parse_ref(ref)
        if isinstance(pin, int):
            version = self._versions.get((name, pin))
            if version is None:
                version = await self.store.version(name, pin)
                self._keep(version)
        else:
            cached = self._labels.get((name, pin))
            if cached is not None and cached[0] > time.monotonic():
                version = cached[1]
            else:
                generation = self._generation
                version = await self._load_label(name, pin)
                if generation == self._generation:  # not invalidated meanwhile
                    self._labels[(name, pin)] = (time.monotonic() + self._ttl, version)
        self.check_model(version.model_config, version.ref)
        return version

    async def _load_label(self, name: str, label: str) -> PromptVersion:
        info = await self.store.label(name, label)
        if info is None:
            await self.store.version(name)  # NotFound for an unknown prompt
            raise not_found(f"label {label!r} of prompt {name!r}")
        version = self._versions.get((name, info.version))
        if version is None:
            version = await self.store.version(name, info.version)
            self._keep(version)
        return version

    def _keep(self, version: PromptVersion) -> None:
        if len(self._versions) > 10_000:
            self._versions.clear()
        self._versions[(version.name, version.version)] = version

    async def render(self, ref: str, variables: Mapping[str, Any]) -> RenderedPrompt:
        """Resolve ``ref`` and render its messages with ``variables``."""
        version = await self.resolve(ref)
        return RenderedPrompt(version, version.render(variables))

    def check_model(self, config: ModelConfig, what: str) -> None:
        known_models = self._models
        if (
            known_models is not None
            and config.model is not None
            and config.model not in known_models
        ):
            known = ", ".join(sorted(known_models))
            raise InvalidRequest(
                f"prompt {what}: model {config.model!r} is not configured (known: {known})",
                code="prompt_model_unknown", param="model",
            )  # fmt: skip

    async def push(
        self, name: str, template: Any, *, variables: Collection[str] | None = None,
        model: Mapping[str, Any] | None = None, author: str | None = None,
        tags: Collection[str] = (), message: str | None = None, actor: str = "unknown",
    ) -> tuple[PromptVersion, bool]:  # fmt: skip
        """Store a new version (True), or the newest one if its content is the same (False)."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidRequest(f"name {name!r}: letters, digits, '_', '.', '-'", param="name")
        messages = parse_template(template)
        config = ModelConfig.parse(model)
        self.check_model(config, name)
        used = template_variables(messages)
        declared = tuple(sorted(variables)) if variables is not None else used
        undeclared = sorted(set(used) - set(declared))
        if undeclared:
            raise InvalidRequest(f"template uses undeclared variable(s) {', '.join(undeclared)}",
                                 param="variables")  # fmt: skip
        sha = content_hash(messages, config)
        version, created = await self.store.add(
            name, messages, declared, config, sha256=sha, author=author,
            tags=sorted(set(tags)), message=message,
        )  # fmt: skip
        details = {"version": version.version, "sha256": sha, "created": created}
        self._note("prompt.pushed", PROMPT_PUSHED, actor, name, "success", details)
        return version, created

    async def move_label(
        self, name: str, label: str, version: int, *, expected: int | None = None,
        actor: str = "unknown",
    ) -> LabelInfo:  # fmt: skip
        """Point ``label`` at ``version`` by compare-and-swap (``expected``: the version it
        must point at now, 0 for none); announced to every process, audited either way."""
        if not LABEL.fullmatch(label):
            raise InvalidRequest(f"label {label!r}: letters, digits, '_', '.', '-'", param="label")
        target = f"{name}@{label}"
        try:
            moved = await self.store.version(name, version)
            self.check_model(moved.model_config, moved.ref)
            info, previous = await self.store.move_label(
                name, label, version, expected=expected, actor=actor
            )
        except Exception as exc:
            code = getattr(exc, "code", None) or type(exc).__name__
            self._note("prompt.label_moved", None, actor, target, "failure",
                       {"version": version, "expected": expected, "reason": code})  # fmt: skip
            raise
        self.invalidate()
        details = {"version": version, "previous": previous, "revision": info.revision}
        self._note("prompt.label_moved", PROMPT_LABEL_MOVED, actor, target, "success", details)
        if self._broadcast is not None:
            await announce_label_move(self._broadcast, name, label)
        return info

    def _note(self, action: str, event: str | None, actor: str, target: str, outcome: str,
              details: dict[str, Any]) -> None:  # fmt: skip
        if self._audit is not None:
            self._audit("change", action, actor, target, outcome, details=details)
        if event is not None and self._publish is not None:
            self._publish(event, {"target": target, "actor": actor, **details})
        log.info(action.replace(".", "_"), target=target, outcome=outcome, **details)

    async def list(self) -> list[PromptSummary]:
        return await self.store.summaries()

    async def show(self, ref: str) -> tuple[PromptVersion, builtins.list[LabelInfo]]:
        """The version ``ref`` names (a bare name: its newest) and the prompt's labels."""
        name, pin = parse_ref(ref)
        if "@" not in ref:
            version = await self.store.version(name)
        elif isinstance(pin, int):
            version = await self.store.version(name, pin)
        else:
            version = await self._load_label(name, pin)
        return version, await self.store.labels(name)

    async def diff(self, name: str, a: int, b: int) -> str:
        """A unified diff of two versions' templates and model configs."""
        left = await self.store.version(name, a)
        right = await self.store.version(name, b)
        return "".join(
            difflib.unified_diff(_diffable(left), _diffable(right), f"{name}@{a}", f"{name}@{b}")
        )


def _diffable(version: PromptVersion) -> list[str]:
    lines: list[str] = []
    for message in version.template:
        lines.append(f"[{message['role']}]\n")
        lines.extend(line + "\n" for line in message["content"].splitlines())
    lines.append("[model]\n")
    options = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
    config = orjson.dumps(version.model_config.stored(), option=options)
    lines.extend(line + "\n" for line in config.decode().splitlines())
    return lines


async def announce_label_move(broadcast: Broadcast, name: str, label: str) -> None:
    """Tell every process that a label of ``name`` moved (their label caches empty)."""
    await broadcast.publish(CHANNEL, f"{name}@{label}".encode())
