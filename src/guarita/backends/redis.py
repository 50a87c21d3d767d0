"""The Redis connection of scale-out mode, shared by the components that keep state there
(sessions, breaker state). Absent ``redis_url``, those components stay in-process."""

from __future__ import annotations

from typing import Any

from guarita.providers.base import missing_extra


def connect(url: str) -> Any:
    """An asyncio Redis client (connections are opened lazily, pooled)."""
    try:
        import redis.asyncio as redis
    except ImportError as exc:
        raise missing_extra("redis", "scale") from exc
    return redis.from_url(url)


async def ping(client: Any) -> bool:
    from redis.exceptions import RedisError

    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
