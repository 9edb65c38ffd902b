"""Short-term memory in a Redis-protocol server: sessions, their turns, and the indexing queue.

One session's keys share the hash tag ``{tenant/session}``, so they live in one Redis Cluster
slot and one Lua script may touch them together:

    llmmesh:session:{t/s}        hash: created_at, updated_at, system_prompt, metadata, user,
                                 seq (last turn), window (first turn of the short-term window)
    llmmesh:history:{t/s}        list of turns (JSON), oldest first, capped
    llmmesh:turn:{t/s}:<turn id> marker that makes a retried append a no-op
    llmmesh:deleted:{t/s}        when the session was deleted (ms): older turns are refused
    llmmesh:response:{t/s}:<id>  a stored response of the Responses API (JSON record)

Per tenant, ``llmmesh:sessions:{t}`` (a sorted set by creation time) lists the sessions,
``llmmesh:responses:{t}`` (a hash) says which session a response id lives in, and
one stream, ``llmmesh:index``, queues stored turns for the long-term indexer (a consumer
group reads it; an entry is removed once its turn is in the vector store).

Appending a turn is one round trip: the script, the tenant's index and the queue entry go in
one pipeline. The index and the stream live in other cluster slots than the session, so they
cannot join the script; the queue entry is therefore written whatever the script decides, and
the indexer keeps only entries whose turn marker exists (the turn was stored; the marker also
holds its seq) and whose session was not deleted after the turn started.

Every key is written with its TTL in the same script, so nothing outlives its session.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import quote

import redis.asyncio as redis

from services.common.redis_client import redis_client

INDEX_STREAM = "llmmesh:index"
INDEX_GROUP = "indexer"

# KEYS: 1 session hash, 2 history, 3 turn marker, 4 deletion mark
# ARGV: 1 ttl, 2 started_at_ms, 3 now_s, 4 max_turns, 5 window_start, 6 user, 7 turn_id, 8 messages (JSON)
# Returns {status, stored turns, seq}: status 1 appended, 0 already stored, -1 refused (deleted).
_APPEND = """
local deleted = redis.call('GET', KEYS[4])
if deleted and tonumber(deleted) >= tonumber(ARGV[2]) then return {-1, 0, 0} end
local ttl = ARGV[1]
local seen = redis.call('GET', KEYS[3])
if seen then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
  return {0, redis.call('LLEN', KEYS[2]), tonumber(seen)}
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
if ARGV[6] ~= '' then redis.call('HSETNX', KEYS[1], 'user', ARGV[6]) end
local window = tonumber(redis.call('HGET', KEYS[1], 'window') or '0')
if tonumber(ARGV[5]) > window then redis.call('HSET', KEYS[1], 'window', ARGV[5]) end
local turn = '{"turn_id":' .. cjson.encode(ARGV[7]) .. ',"seq":' .. seq .. ',"messages":' .. ARGV[8] .. '}'
redis.call('RPUSH', KEYS[2], turn)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('SET', KEYS[3], seq, 'EX', ttl)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return {1, redis.call('LLEN', KEYS[2]), seq}
"""

# KEYS: 1 session hash; ARGV: 1 ttl, 2 now_s, 3 system_prompt or '', 4 set prompt?, 5 metadata JSON or '', 6 user
# Creates the session if missing (created_at set once), updates what is given.
_UPSERT = """
local fresh = redis.call('HSETNX', KEYS[1], 'created_at', ARGV[2])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'system_prompt', ARGV[3]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'metadata', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSETNX', KEYS[1], 'user', ARGV[6]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return fresh
"""

# KEYS: 1 history; ARGV: 1 turn_id, 2 text. Blanks that turn's messages holding the text.
_FORGET = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i, raw in ipairs(items) do
  local turn = cjson.decode(raw)
  if turn.turn_id == ARGV[1] then
    local changed = 0
    for _, m in ipairs(turn.messages) do
      if m.content == ARGV[2] then m.content = '[forgotten]'; changed = 1 end
    end
    if changed == 1 then redis.call('LSET', KEYS[1], i - 1, cjson.encode(turn)) end
    return changed
  end
end
return 0
"""

# KEYS: 1 history; ARGV: 1 turn_id, 2 message index ('' for the whole turn).
# Removes the turn, or blanks one message into a placeholder (role ''), so the others keep their
# positions. Returns the turn's message count (before), or -1 when there was no such turn/message.
_FORGET_TURN = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i, raw in ipairs(items) do
  local turn = cjson.decode(raw)
  if turn.turn_id == ARGV[1] then
    local count = #turn.messages
    if ARGV[2] == '' then
      redis.call('LREM', KEYS[1], 1, raw)
      return count
    end
    local m = turn.messages[tonumber(ARGV[2]) + 1]
    if not m or m.role == '' then return -1 end
    turn.messages[tonumber(ARGV[2]) + 1] = {role = '', content = '', name = '', tool_call_id = '', tool_calls_json = ''}
    redis.call('LSET', KEYS[1], i - 1, cjson.encode(turn))
    return count
  end
end
return -1
"""


@dataclass(frozen=True)
class StoredMessage:
    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""
    tool_calls_json: str = ""


@dataclass(frozen=True)
class StoredTurn:
    turn_id: str
    seq: int
    messages: list[StoredMessage]


@dataclass
class SessionInfo:
    id: str
    created_at: int = 0
    updated_at: int = 0
    system_prompt: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    user: str = ""
    # Last turn's seq, and the first seq of the short-term window.
    seq: int = 0
    window: int = 0
    turns: int = 0


@dataclass(frozen=True)
class IndexEntry:
    """A turn waiting in the queue for the long-term indexer."""

    entry_id: str
    tenant: str
    session_id: str
    user: str
    turn_id: str
    # When the turn was accepted and when it was queued (Unix ms).
    started_ms: int
    created_ms: int
    messages: list[StoredMessage]
    # From the turn's marker when claimed: its seq, 0 when the turn was not stored (refused,
    # or expired with its session since).
    seq: int = 0
    # The session was deleted after the turn started.
    deleted: bool = False

    @property
    def live(self) -> bool:
        return self.seq > 0 and not self.deleted


class SessionDeletedError(Exception):
    """The turn started before its session was deleted: it is not stored."""


def tag(tenant: str, session_id: str) -> str:
    """``{tenant/session}``, each part percent-encoded: no tenant+session pair can spell
    another's tag, and no glob or brace character reaches a key."""
    return "{" + quote(tenant, safe="") + "/" + quote(session_id, safe="") + "}"


def _session_key(tenant: str, session_id: str) -> str:
    return f"llmmesh:session:{tag(tenant, session_id)}"


def _history_key(tenant: str, session_id: str) -> str:
    return f"llmmesh:history:{tag(tenant, session_id)}"


def _turn_key(tenant: str, session_id: str, turn_id: str) -> str:
    return f"llmmesh:turn:{tag(tenant, session_id)}:{turn_id}"


def _deleted_key(tenant: str, session_id: str) -> str:
    return f"llmmesh:deleted:{tag(tenant, session_id)}"


def _sessions_key(tenant: str) -> str:
    return "llmmesh:sessions:{" + quote(tenant, safe="") + "}"


def _response_key(tenant: str, session_id: str, response_id: str) -> str:
    return f"llmmesh:response:{tag(tenant, session_id)}:{response_id}"


def _responses_key(tenant: str) -> str:
    return "llmmesh:responses:{" + quote(tenant, safe="") + "}"


def _forgotten_key(tenant: str) -> str:
    return "llmmesh:forgotten:{" + quote(tenant, safe="") + "}"


def _decode_turn(raw: str) -> StoredTurn:
    data = json.loads(raw)
    return StoredTurn(data["turn_id"], int(data["seq"]), [StoredMessage(**m) for m in data["messages"]])


def _session_info(session_id: str, raw: Mapping[str, str], turns: int) -> SessionInfo:
    return SessionInfo(
        id=session_id,
        created_at=int(raw.get("created_at", 0)),
        updated_at=int(raw.get("updated_at", 0)),
        system_prompt=raw.get("system_prompt", ""),
        metadata=json.loads(raw["metadata"]) if raw.get("metadata") else {},
        user=raw.get("user", ""),
        seq=int(raw.get("seq", 0)),
        window=int(raw.get("window", 0)),
        turns=turns,
    )


class SessionStore:
    def __init__(self, client: redis.Redis, ttl_s: int, max_turns: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._max_turns = max_turns
        self._upsert = client.register_script(_UPSERT)
        self._forget = client.register_script(_FORGET)
        self._forget_turn = client.register_script(_FORGET_TURN)

    @classmethod
    def from_url(cls, url: str, ttl_s: int, max_turns: int, timeout_s: float = 2.0) -> SessionStore:
        client = redis_client(url, timeout_s)
        return cls(client, ttl_s, max_turns)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()

    # --- sessions -------------------------------------------------------------------------

    async def upsert_session(
        self,
        tenant: str,
        session_id: str,
        *,
        system_prompt: str | None = None,
        metadata: dict[str, str] | None = None,
        user: str = "",
    ) -> bool:
        """Creates the session or updates the given fields; True when it is new."""
        now = int(time.time())
        fresh = await self._upsert(
            keys=[_session_key(tenant, session_id)],
            args=[
                self._ttl_s,
                now,
                system_prompt or "",
                "1" if system_prompt is not None else "0",
                json.dumps(metadata) if metadata is not None else "",
                user,
            ],
        )
        if fresh:
            await self._index_session(tenant, session_id, now)
        return bool(fresh)

    async def _index_session(self, tenant: str, session_id: str, created_s: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            self._add_to_index(pipe, tenant, session_id, created_s)
            await pipe.execute()

    def _add_to_index(self, pipe: Any, tenant: str, session_id: str, created_s: int) -> None:
        """Lists the session in its tenant's index; the index lives as long as its newest session."""
        key = _sessions_key(tenant)
        pipe.zadd(key, {session_id: created_s}, nx=True)
        pipe.expire(key, self._ttl_s, gt=True)
        pipe.expire(key, self._ttl_s, nx=True)

    async def session(self, tenant: str, session_id: str) -> SessionInfo | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(_session_key(tenant, session_id))
            pipe.llen(_history_key(tenant, session_id))
            raw, turns = await pipe.execute()
        return _session_info(session_id, raw, int(turns)) if raw else None

    async def context(self, tenant: str, session_id: str) -> tuple[SessionInfo | None, list[StoredTurn]]:
        """The session and its stored turns in one round trip; reading keeps it alive."""
        session_key, history_key = _session_key(tenant, session_id), _history_key(tenant, session_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(session_key)
            pipe.lrange(history_key, 0, -1)
            pipe.expire(session_key, self._ttl_s)
            pipe.expire(history_key, self._ttl_s)
            raw, history, _, _ = await pipe.execute()
        if not raw:
            return None, []
        return _session_info(session_id, raw, len(history)), [_decode_turn(t) for t in history]

    async def list_sessions(self, tenant: str, limit: int, after: str = "") -> tuple[list[SessionInfo], bool]:
        """Newest first. The cursor is a session id: the page starts right after its current
        place, so sessions created meanwhile shift nothing. Sessions that expired meanwhile are
        pruned from the index as they are met."""
        key = _sessions_key(tenant)
        start = 0
        if after:
            rank: Any = await self._redis.zrevrank(key, after)
            if rank is None:
                return [], False
            start = int(rank) + 1
        found: list[SessionInfo] = []
        while len(found) <= limit:
            batch: list[str] = await self._redis.zrevrange(key, start, start + limit)  # type: ignore[assignment]
            if not batch:
                break
            start += len(batch)
            for session_id in batch:
                info = await self.session(tenant, session_id)
                if info is None:
                    await self._redis.zrem(key, session_id)
                    start -= 1  # everything after it moved up one place
                else:
                    found.append(info)
        return found[:limit], len(found) > limit

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        """Drops every key of the session and marks it deleted, so turns still in flight
        (a background append, a retry) cannot bring it back."""
        tag_ = tag(tenant, session_id)
        keys = [_session_key(tenant, session_id), _history_key(tenant, session_id)]
        # The tag is percent-encoded: it holds no glob character and ends at its own brace.
        async for key in self._redis.scan_iter(match=f"llmmesh:turn:{tag_}:*", count=500):
            keys.append(key)
        responses = [key async for key in self._redis.scan_iter(match=f"llmmesh:response:{tag_}:*", count=500)]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys, *responses)
            pipe.set(_deleted_key(tenant, session_id), int(time.time() * 1000), ex=self._ttl_s)
            pipe.zrem(_sessions_key(tenant), session_id)
            deleted, _, _ = await pipe.execute()
        if responses:
            await self._redis.hdel(_responses_key(tenant), *(key.rsplit(":", 1)[1] for key in responses))
        return bool(deleted)

    # --- stored responses ---------------------------------------------------------------

    async def put_response(self, tenant: str, session_id: str, response_id: str, record: str) -> None:
        """Stores a response's record with its session (same TTL); the tenant's index says
        which session an id lives in."""
        index = _responses_key(tenant)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(_response_key(tenant, session_id, response_id), record, ex=self._ttl_s)
            pipe.hset(index, response_id, session_id)
            pipe.expire(index, self._ttl_s)
            await pipe.execute()

    async def response(self, tenant: str, response_id: str) -> str | None:
        """The record, or None (unknown, or gone with its session)."""
        session_id: Any = await self._redis.hget(_responses_key(tenant), response_id)
        if session_id is None:
            return None
        record: Any = await self._redis.get(_response_key(tenant, session_id, response_id))
        return str(record) if record is not None else None

    async def delete_response(self, tenant: str, response_id: str) -> str | None:
        """Deletes the record; returns it (None when there was none)."""
        record = await self.response(tenant, response_id)
        session_id: Any = await self._redis.hget(_responses_key(tenant), response_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            if session_id is not None:
                pipe.delete(_response_key(tenant, session_id, response_id))
            pipe.hdel(_responses_key(tenant), response_id)
            await pipe.execute()
        return record

    async def forget_turn(self, tenant: str, session_id: str, turn_id: str, message_index: int | None) -> int:
        """Removes a stored turn or blanks one of its messages (see _FORGET_TURN); the turn's
        message count, or -1 when there was no such turn or message."""
        index = "" if message_index is None else str(message_index)
        found = await self._forget_turn(keys=[_history_key(tenant, session_id)], args=[turn_id, index])
        return int(found)

    # --- turns --------------------------------------------------------------------------

    async def append(
        self,
        tenant: str,
        session_id: str,
        turn_id: str,
        messages: list[StoredMessage],
        *,
        user: str = "",
        started_at_ms: int = 0,
        window_start: int = 0,
    ) -> tuple[bool, int, int]:
        """Stores one turn and queues it for indexing; returns (appended, stored turns, seq).

        Raises SessionDeletedError when the session was deleted after the turn started."""
        now = int(time.time())
        started_at_ms = started_at_ms or int(time.time() * 1000)
        payload = json.dumps([asdict(m) for m in messages])
        keys = [
            _session_key(tenant, session_id),
            _history_key(tenant, session_id),
            _turn_key(tenant, session_id, turn_id),
            _deleted_key(tenant, session_id),
        ]
        args: list[str | int] = [self._ttl_s, started_at_ms, now, self._max_turns, window_start, user, turn_id, payload]
        # Queued on a repeat too: if the first attempt stored the turn but lost the queue
        # write, the retry repairs it. Indexing is idempotent (point ids derive from the turn).
        entry = {
            "tenant": tenant,
            "session_id": session_id,
            "user": user,
            "turn_id": turn_id,
            "started_ms": started_at_ms,
            "created_ms": int(time.time() * 1000),
            "messages": payload,
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            # EVAL, not EVALSHA: redis-py checks a pipeline's registered scripts with an extra
            # round trip on every execute; the server caches the compiled script either way.
            pipe.eval(_APPEND, len(keys), *keys, *args)
            self._add_to_index(pipe, tenant, session_id, now)
            pipe.xadd(INDEX_STREAM, {k: str(v) for k, v in entry.items()})
            (status, stored, seq), *_ = await pipe.execute()
        if int(status) < 0:
            raise SessionDeletedError(session_id)
        return bool(status), int(stored), int(seq)

    async def forget_message(self, tenant: str, session_id: str, turn_id: str, text: str) -> bool:
        """Blanks the messages of a stored turn that hold `text` (a deleted memory leaves no
        copy in the history). One script: a concurrent append cannot shift the list under it."""
        changed = await self._forget(keys=[_history_key(tenant, session_id)], args=[turn_id, text])
        return bool(changed)

    async def mark_forgotten(self, tenant: str, memory_ids: list[str]) -> None:
        """Remembers deleted memory ids for a while, so an indexer already holding their
        turn cannot write them back."""
        key = _forgotten_key(tenant)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, *memory_ids)
            pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def forgotten(self, tenant: str, memory_ids: list[str]) -> set[str]:
        if not memory_ids:
            return set()
        flags = await self._redis.smismember(_forgotten_key(tenant), memory_ids)
        return {m for m, flag in zip(memory_ids, flags, strict=True) if flag}

    # --- the indexing queue -------------------------------------------------------------

    async def ensure_queue(self) -> None:
        try:
            await self._redis.xgroup_create(INDEX_STREAM, INDEX_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim(self, consumer: str, count: int, block_ms: int, min_idle_ms: int) -> list[IndexEntry]:
        """Entries for this consumer: first any left pending by a consumer that died (idle
        longer than min_idle_ms), else new ones (waiting up to block_ms)."""
        claimed: Any = await self._redis.xautoclaim(
            INDEX_STREAM, INDEX_GROUP, consumer, min_idle_time=min_idle_ms, start_id="0", count=count
        )
        stale = claimed[1]
        if stale:
            return await self._resolved([_entry(entry_id, fields) for entry_id, fields in stale if fields])
        reply: Any = await self._redis.xreadgroup(
            INDEX_GROUP, consumer, {INDEX_STREAM: ">"}, count=count, block=block_ms or None
        )
        entries = [_entry(entry_id, fields) for _, found in reply or [] for entry_id, fields in found if fields]
        return await self._resolved(entries)

    async def _resolved(self, entries: list[IndexEntry]) -> list[IndexEntry]:
        """The entries with their seq and deletion state, read in one round trip."""
        if not entries:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.get(_turn_key(entry.tenant, entry.session_id, entry.turn_id))
                pipe.get(_deleted_key(entry.tenant, entry.session_id))
            found = await pipe.execute()
        return [
            replace(entry, seq=int(seq or 0), deleted=int(deleted or 0) >= entry.started_ms)
            for entry, seq, deleted in zip(entries, found[::2], found[1::2], strict=True)
        ]

    async def deleted_since_started(self, entries: list[IndexEntry]) -> list[IndexEntry]:
        """Those of the entries whose session was deleted after their turn started (one round trip)."""
        if not entries:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.get(_deleted_key(entry.tenant, entry.session_id))
            marks = await pipe.execute()
        return [entry for entry, mark in zip(entries, marks, strict=True) if int(mark or 0) >= entry.started_ms]

    async def done(self, entry_ids: list[str]) -> None:
        if not entry_ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xack(INDEX_STREAM, INDEX_GROUP, *entry_ids)
            pipe.xdel(INDEX_STREAM, *entry_ids)
            await pipe.execute()

    async def unqueue(self, tenant: str, session_id: str, turn_id: str = "") -> int:
        """Removes queued entries of a session (or of one of its turns)."""
        doomed: list[str] = []
        async for entry_id, fields in self._scan_queue():
            ours = fields.get("tenant") == tenant and fields.get("session_id") == session_id
            if ours and (not turn_id or fields.get("turn_id") == turn_id):
                doomed.append(entry_id)
        if doomed:
            await self.done(doomed)
        return len(doomed)

    async def queued(self) -> int:
        return int(await self._redis.xlen(INDEX_STREAM))

    async def _scan_queue(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        start = "-"
        while True:
            batch: Any = await self._redis.xrange(INDEX_STREAM, min=start, max="+", count=500)
            if not batch:
                return
            for entry_id, fields in batch:
                yield entry_id, fields
            start = "(" + batch[-1][0]


def _entry(entry_id: str, fields: Mapping[str, str]) -> IndexEntry:
    return IndexEntry(
        entry_id=entry_id,
        tenant=fields["tenant"],
        session_id=fields["session_id"],
        user=fields.get("user", ""),
        turn_id=fields["turn_id"],
        started_ms=int(fields.get("started_ms", 0)),
        created_ms=int(fields.get("created_ms", 0)),
        messages=[StoredMessage(**m) for m in json.loads(fields["messages"])],
    )
