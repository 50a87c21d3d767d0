"""Session context in Redis: a list of turns per session and its owner, expiring when idle.

The API stays stateless in scale-out mode: any process serves any turn of a conversation.
"""

from __future__ import annotations

from typing import Any

import orjson

from guarita.store.sessions import Turn


class RedisSessionStore:
    def __init__(self, client: Any, *, prefix: str, ttl_s: float, max_turns: int) -> None:
        self._redis = client
        self._prefix = prefix + "session:"
        self._ttl_ms = int(ttl_s * 1000)
        self._max_turns = max_turns

    async def owner_and_history(self, session_id: str) -> tuple[str | None, list[Turn]] | None:
        key = self._prefix + session_id
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key + ":owner")
            pipe.lrange(key + ":turns", -self._max_turns, -1)
            owner, raw_turns = await pipe.execute()
        if owner is None:
            return None
        turns = [Turn(**orjson.loads(item)) for item in raw_turns]
        owner_id = owner.decode()
        return (owner_id or None), turns

    async def append(
        self, session_id: str, *, agent: str, key_id: str | None, turns: list[Turn]
    ) -> None:
        key = self._prefix + session_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key + ":owner", key_id or "", nx=True)
            pipe.rpush(
                key + ":turns",
                *(orjson.dumps({"role": t.role, "content": t.content}) for t in turns),
            )
            pipe.ltrim(key + ":turns", -self._max_turns, -1)
            pipe.pexpire(key + ":owner", self._ttl_ms)
            pipe.pexpire(key + ":turns", self._ttl_ms)
            await pipe.execute()
