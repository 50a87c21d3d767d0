"""The innermost step: hand the call to the provider serving its model."""

from __future__ import annotations

from collections.abc import Mapping

from guarita.errors import ModelNotFound
from guarita.providers.base import Provider
from guarita.types import Call, Reply


class ProviderCall:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = providers

    async def __call__(self, call: Call) -> Reply:
        provider = self._providers.get(call.model)
        if provider is None:
            raise ModelNotFound(f"model {call.model!r} does not exist", param="model")
        if call.stream:
            return Reply(model=call.model, provider=provider.name, source=provider.stream(call))
        return Reply.complete(provider.name, await provider.complete(call))
