"""The exact tier of the response cache: a complete answer stored under a hash of the
canonical request, within a namespace.

* **The key** is a SHA-256 of the request's canonical JSON (sorted keys): the model or agent
  called, the prompt version, and every field of the body that can change the answer
  (messages, tools, sampling parameters, response format, ...); only fields that cannot
  (``stream``, ``stream_options``, ``user``, ``metadata``) are left out. Namespaces are
  hashed into the storage key, so no lookup can reach another namespace's entries.
* **An entry** is the answer's ``chat.completion`` body with its usage and the model that
  served it, fresh for its TTL and then kept ``stale_s`` longer, for the ``cache`` fallback
  level only.
* **Where entries live**: :class:`LocalEntries`, a bounded LRU in the process (entries and
  bytes), in the embedded mode; :class:`SharedEntries`, values of the shared state with a
  TTL (Redis), in scale-out mode, where an entry one process wrote is a hit for all.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from guarita.state import Values
from guarita.types import Usage

NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store"})
"""Body fields that cannot change the answer (so requests differing only there share it)."""
KEY_PREFIX = "cache:"
FORMAT = 1


def request_key(target: str, body: Mapping[str, Any], prompt_version: str | None = None) -> str:
    """The hash of a request: ``target`` is ``agent:<name>`` or ``model:<name>``."""
    fields = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    canonical = orjson.dumps(
        {"f": FORMAT, "t": target, "p": prompt_version, "b": fields},
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


def namespace_key(namespace: str) -> str:
    """The storage prefix of a namespace: hashed, so no name can be a prefix of another."""
    return KEY_PREFIX + hashlib.sha256(namespace.encode()).hexdigest()[:24] + ":"


@dataclass(frozen=True, slots=True)
class Entry:
    body: dict[str, Any]
    """The ``chat.completion`` body as it was answered."""
    usage: Usage
    model: str
    """The configured model that answered (prices the saving)."""
    stored_at: float
    fresh_until: float
    """Epoch seconds; after it, the entry only serves the ``cache`` fallback level."""

    def fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": FORMAT,
                "body": self.body,
                "usage": [self.usage.input_tokens, self.usage.output_tokens],
                "model": self.model,
                "stored_at": self.stored_at,
                "fresh_until": self.fresh_until,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """None for what is not an entry of this format (a newer or damaged one)."""
        try:
            data = orjson.loads(raw)
            if data.get("v") != FORMAT:
                return None
            usage = data["usage"]
            return cls(
                body=data["body"],
                usage=Usage(int(usage[0]), int(usage[1])),
                model=str(data["model"]),
                stored_at=float(data["stored_at"]),
                fresh_until=float(data["fresh_until"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return None


class Entries(Protocol):
    """Where the exact tier keeps its entries."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, keep_s: float) -> None: ...

    async def clear(self, namespace_prefix: str | None = None) -> int: ...

    async def size(self) -> int: ...


class LocalEntries:
    """A bounded LRU in this process: at most ``max_entries`` and ``max_bytes``; the least
    recently used go first, and an entry past ``keep_s`` is gone when next looked at."""

    def __init__(
        self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.bytes = 0
        self.evicted = 0

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item[0]

    async def put(self, key: str, value: bytes, keep_s: float) -> None:
        if len(value) > self._max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (value, self._clock() + keep_s)
        self.bytes += len(value)
        while len(self._items) > self._max_entries or self.bytes > self._max_bytes:
            oldest = next(iter(self._items))
            self._drop(oldest)
            self.evicted += 1

    async def clear(self, namespace_prefix: str | None = None) -> int:
        keys = [
            k for k in self._items if namespace_prefix is None or k.startswith(namespace_prefix)
        ]
        for key in keys:
            self._drop(key)
        return len(keys)

    async def size(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, key: str) -> None:
        value, _ = self._items.pop(key)
        self.bytes -= len(value)


class SharedEntries:
    """Entries as values of the shared state, each with its TTL (Redis in scale-out mode:
    what one process stored is a hit for every other at once)."""

    def __init__(self, values: Values) -> None:
        self._values = values

    async def get(self, key: str) -> bytes | None:
        return await self._values.get(key)

    async def put(self, key: str, value: bytes, keep_s: float) -> None:
        await self._values.set(key, value, ttl_s=keep_s)

    async def clear(self, namespace_prefix: str | None = None) -> int:
        return await self._values.delete_prefix(namespace_prefix or KEY_PREFIX)

    async def size(self) -> int:
        return await self._values.count_prefix(KEY_PREFIX)
