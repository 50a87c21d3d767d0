"""A prompt version's content and its rendering: a Jinja2 template per message, rendered in
a sandbox (no attribute escapes to Python internals) where a missing variable is an error
rather than an empty string.

The content hash is the sha256 of the sorted-key JSON of the template and the model
configuration, so the same content pushed twice is recognised as one version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from guarita.errors import InvalidRequest

ROLES = frozenset({"system", "user", "assistant", "developer"})
"""The roles a template message may have."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What a prompt version asks of the model; every field optional (None: the agent's)."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    response_format: dict[str, Any] | None = None

    def body_fields(self) -> dict[str, Any]:
        """The sampling fields that are set, as ``Call.body`` takes them (not ``model``)."""
        return {k: v for k, v in self.stored().items() if k != "model"}

    def stored(self) -> dict[str, Any]:
        """The fields that are set (JSON-ready)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> ModelConfig:
        """From a file's or request's ``model`` mapping, checked field by field."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(
                f"model: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                param="model",
            )
        _check(data, "model", str)
        _check(data, "temperature", (int, float), low=0, high=2)
        _check(data, "top_p", (int, float), low=0, high=1)
        _check(data, "max_tokens", int, low=1)
        _check(data, "seed", int)
        _check(data, "response_format", dict)
        if data.get("response_format") is not None:
            try:  # stored and hashed as JSON: a number past 64 bits cannot be
                orjson.dumps(data["response_format"])
            except TypeError as exc:
                raise InvalidRequest(f"model.response_format: {exc}",
                                     param="model.response_format") from None  # fmt: skip
        stop = data.get("stop")
        if stop is not None and (
            not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
        ):
            raise InvalidRequest("model.stop: must be a list of strings", param="model.stop")
        for name in ("temperature", "top_p"):
            if data.get(name) is not None:
                data[name] = float(data[name])
        return cls(**data)


def _check(
    data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *,
    low: float | None = None, high: float | None = None,
) -> None:  # fmt: skip
    value = data.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequest(f"model.{name}: wrong type {type(value).__name__}",
                             param=f"model.{name}")  # fmt: skip
    number = float(value) if isinstance(value, int | float) else None
    if number is not None and (
        (low is not None and number < low) or (high is not None and number > high)
    ):
        raise InvalidRequest(f"model.{name}: {value} is outside [{low}, {high}]",
                             param=f"model.{name}")  # fmt: skip


_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def parse_template(template: str | Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """A string is one system message; else a list of ``{role, content}``. Each content must
    compile as a Jinja2 template."""
    if isinstance(template, str):
        messages: list[dict[str, str]] = [{"role": "system", "content": template}]
    elif isinstance(template, Sequence) and template:
        messages = []
        for i, item in enumerate(template):
            if not isinstance(item, Mapping) or set(item) != {"role", "content"}:
                raise InvalidRequest(f"template[{i}]: must be {{role, content}}",
                                     param="template")  # fmt: skip
            role, content = item["role"], item["content"]
            if role not in ROLES or not isinstance(content, str):
                raise InvalidRequest(
                    f"template[{i}]: role must be one of {', '.join(sorted(ROLES))} and "
                    "content a string",
                    param="template",
                )
            messages.append({"role": role, "content": content})
    else:
        raise InvalidRequest("template: a string or a non-empty list of {role, content}",
                             param="template")  # fmt: skip
    for i, message in enumerate(messages):
        try:
            _ENV.parse(message["content"])
        except TemplateError as exc:
            raise InvalidRequest(f"template[{i}]: not a valid template: {exc}",
                                 param="template") from None  # fmt: skip
    return messages


def template_variables(template: Sequence[Mapping[str, str]]) -> tuple[str, ...]:
    """The variables a template reads (those it does not set itself), sorted."""
    found: set[str] = set()
    for message in template:
        found |= meta.find_undeclared_variables(_ENV.parse(message["content"]))
    return tuple(sorted(found))


def content_hash(template: Sequence[Mapping[str, str]], model_config: ModelConfig) -> str:
    """sha256 of the canonical content: sorted-key JSON of the template and model config."""
    canonical = orjson.dumps(
        {"template": list(template), "model_config": model_config.stored()},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One immutable version of a prompt, as the registry hands it out."""

    name: str
    version: int
    template: list[dict[str, str]]
    variables: tuple[str, ...]
    model_config: ModelConfig
    author: str | None
    tags: tuple[str, ...]
    message: str | None
    sha256: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, variables: Mapping[str, Any]) -> list[dict[str, str]]:
        """The messages with ``variables`` filled in, in the sandbox; a missing variable or
        a refused construct is a 400 naming ``prompt_variables``."""
        rendered = []
        for message in self.template:
            try:
                content = _ENV.from_string(message["content"]).render(dict(variables))
            except TemplateError as exc:  # UndefinedError, SecurityError included
                raise InvalidRequest(
                    f"prompt {self.ref} does not render: {exc}", param="prompt_variables"
                ) from None
            rendered.append({"role": message["role"], "content": content})
        return rendered

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "template": self.template,
            "variables": list(self.variables),
            "model": self.model_config.stored(),
            "author": self.author,
            "tags": list(self.tags),
            "message": self.message,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat(),
        }
