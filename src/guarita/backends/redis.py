"""The Redis connection of scale-out mode, shared by the components that keep state there
(sessions, breaker state). Absent ``redis_url``, those components stay in-process."""

from __future__ import annotations

from typing import Any

from guarita.providers.base import missing_extra

MAX_CONNECTIONS = 256
"""Connections of one process's pool. Past it, a command waits for a free connection (up
to ``POOL_TIMEOUT_S``) instead of failing: redis-py's default pool raises ``Too many
connections`` at 100 commands in flight, which a burst of requests reaches."""
POOL_TIMEOUT_S = 10.0


def connect(url: str) -> Any:
    """An asyncio Redis client (connections are opened lazily, pooled, bounded)."""
    try:
        import redis.asyncio as redis
    except ImportError as exc:
        raise missing_extra("redis", "scale") from exc
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT_S
    )
    return redis.Redis(connection_pool=pool)


async def ping(client: Any) -> bool:
    from redis.exceptions import RedisError

    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
