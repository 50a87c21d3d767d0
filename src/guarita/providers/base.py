"""The provider protocol and the registry that maps a provider name to its factory.

A provider instance serves one configured model (one deployment). It answers a
:class:`~guarita.types.Call` with a complete :class:`~guarita.types.Completion` or with a
stream of OpenAI ``chat.completion.chunk`` dicts whose last chunk carries ``usage``.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from guarita.errors import ConfigError, UnsupportedOperation
from guarita.settings import ModelSettings
from guarita.types import Call, Chunk, Completion, Embeddings


class Provider(Protocol):
    name: str

    async def start(self) -> None:
        """Prepare what the first call needs (load weights, open a connection pool)."""

    async def ready(self) -> bool:
        """Whether a call can be served now, without calling the model."""

    async def complete(self, call: Call) -> Completion: ...

    def stream(self, call: Call) -> AsyncIterator[Chunk]: ...

    async def embed(self, inputs: list[str]) -> Embeddings: ...

    async def aclose(self) -> None: ...


class BaseProvider:
    """Defaults for the optional parts of :class:`Provider`."""

    name = "base"

    def __init__(self, model_name: str, settings: ModelSettings) -> None:
        self.model_name = model_name
        self.settings = settings

    @property
    def upstream_model(self) -> str:
        return self.settings.upstream or self.model_name

    async def start(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def embed(self, inputs: list[str]) -> Embeddings:
        raise UnsupportedOperation(
            f"model {self.model_name!r} (provider {self.name}) does not serve embeddings"
        )

    async def aclose(self) -> None:
        return None


ProviderFactory = Callable[[str, ModelSettings], Provider]

# Built-in providers, imported only when a configured model uses them, so that a
# missing optional dependency (llama-cpp-python) only matters to those who need it.
BUILTIN: dict[str, str] = {
    "llamacpp": "guarita.providers.llamacpp:LlamaCppProvider",
    "openai": "guarita.providers.openai_compat:OpenAICompatProvider",
    "anthropic": "guarita.providers.anthropic:AnthropicProvider",
    "scripted": "guarita.providers.scripted:ScriptedProvider",
}


class ProviderRegistry:
    """Maps provider names to factories; extra providers can be registered by name."""

    def __init__(self, factories: dict[str, str | ProviderFactory] | None = None) -> None:
        self._factories: dict[str, str | ProviderFactory] = dict(BUILTIN)
        self._factories.update(factories or {})

    def register(self, name: str, factory: ProviderFactory) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, model_name: str, settings: ModelSettings) -> Provider:
        factory = self._factories.get(settings.provider)
        if factory is None:
            raise ConfigError(
                f"models.{model_name}.provider: unknown provider {settings.provider!r}; "
                f"known: {', '.join(self.names())}"
            )
        if isinstance(factory, str):
            factory = _import(factory)
        return factory(model_name, settings)


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def missing_extra(package: str, extra: str) -> ConfigError:
    return ConfigError(
        f'{package} is not installed; install it with: pip install "guarita[{extra}]"'
    )
