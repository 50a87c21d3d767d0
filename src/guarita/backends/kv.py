"""Key-value state shared by the processes of one deployment (counters, breaker state,
cache entries): in-process for the embedded default, Redis in scale-out mode.

Counters use a single atomic Redis operation (INCRBY + EXPIRE in one Lua script) so
that they are exact across processes.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from guarita.providers.base import missing_extra


class KeyValue(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        """Add to a counter, creating it (with ``ttl_s``) if absent; returns the new value."""

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryKV:
    """One process's dictionary with expiry; what the embedded default uses."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float | None, Any]] = {}

    def _live(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    async def get(self, key: str) -> bytes | None:
        value = self._live(key)
        return (
            value
            if isinstance(value, bytes)
            else (str(value).encode() if value is not None else None)
        )

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        self._data[key] = (time.monotonic() + ttl_s if ttl_s else None, value)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        current = self._live(key)
        if current is None:
            value = amount
            self._data[key] = (time.monotonic() + ttl_s if ttl_s else None, value)
        else:
            value = int(current) + amount
            self._data[key] = (self._data[key][0], value)
        return value

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()


_INCR = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if value == tonumber(ARGV[1]) and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""


class RedisKV:
    def __init__(self, url: str, *, prefix: str = "guarita:") -> None:
        try:
            import redis.asyncio as redis
        except ImportError as exc:
            raise missing_extra("redis", "scale") from exc
        self.client: Any = redis.from_url(url)
        self.prefix = prefix
        self._incr = self.client.register_script(_INCR)

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(self.prefix + key)
        return value if value is None else bytes(value)

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        await self.client.set(self.prefix + key, value, px=int(ttl_s * 1000) if ttl_s else None)

    async def delete(self, key: str) -> None:
        await self.client.delete(self.prefix + key)

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        return int(await self._incr(keys=[self.prefix + key], args=[amount, ttl_ms]))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (OSError, ConnectionError, TimeoutError):
            return False
        except Exception:  # noqa: BLE001 - redis-py raises its own ConnectionError family
            return False

    async def aclose(self) -> None:
        await self.client.aclose()
