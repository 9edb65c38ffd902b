"""Short-term history per tenant+session in a Redis-protocol server.

Keys carry a hash tag ``{tenant/session}`` so one session's keys live in one Redis Cluster
slot and the append script may touch them together.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from urllib.parse import quote

import redis.asyncio as redis

# KEYS[1] history list, KEYS[2] turn marker; ARGV[1] ttl, ARGV[2..] messages (JSON).
# The marker makes a retried append (same turn id) a no-op.
_APPEND = """
local fresh = redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1])
if fresh then
  for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {fresh and 1 or 0, redis.call('LLEN', KEYS[1])}
"""


@dataclass(frozen=True)
class StoredMessage:
    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""
    tool_calls_json: str = ""


def _tag(tenant: str, session_id: str) -> str:
    """``{tenant/session}``, each part percent-encoded: no tenant+session pair can spell
    another's tag, and no glob or brace character reaches a key."""
    return "{" + quote(tenant, safe="") + "/" + quote(session_id, safe="") + "}"


class HistoryStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._append = client.register_script(_APPEND)

    @classmethod
    def from_url(cls, url: str, ttl_s: int) -> HistoryStore:
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl_s)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()

    @staticmethod
    def _history_key(tenant: str, session_id: str) -> str:
        return f"llmmesh:history:{_tag(tenant, session_id)}"

    @staticmethod
    def _turn_key(tenant: str, session_id: str, turn_id: str) -> str:
        return f"llmmesh:turn:{_tag(tenant, session_id)}:{turn_id}"

    async def history(self, tenant: str, session_id: str) -> list[StoredMessage]:
        key = self._history_key(tenant, session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.expire(key, self._ttl_s)  # reading a session keeps it alive
            raw, _ = await pipe.execute()
        return [StoredMessage(**json.loads(item)) for item in raw]

    async def append(
        self, tenant: str, session_id: str, turn_id: str, messages: list[StoredMessage]
    ) -> tuple[bool, int]:
        """Appends one turn; returns (appended, messages now stored)."""
        keys = [self._history_key(tenant, session_id), self._turn_key(tenant, session_id, turn_id)]
        args: list[str | int] = [self._ttl_s, *(json.dumps(asdict(m)) for m in messages)]
        fresh, length = await self._append(keys=keys, args=args)
        return bool(fresh), int(length)

    async def delete(self, tenant: str, session_id: str) -> bool:
        tag = _tag(tenant, session_id)
        keys = [self._history_key(tenant, session_id)]
        # The tag is percent-encoded: it holds no glob character and ends at its own brace.
        async for key in self._redis.scan_iter(match=f"llmmesh:turn:{tag}:*", count=500):
            keys.append(key)
        return bool(await self._redis.delete(*keys))
