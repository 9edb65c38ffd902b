"""SessionStore against a real Redis-protocol server (valkey-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from services.memory import store as store_module
from services.memory.store import SessionDeletedError, SessionStore, StoredMessage

TTL_S = 600
MAX_TURNS = 5


# The store's own key names, so these tests keep working if the key encoding changes.
history_key = store_module._history_key
turn_key = store_module._turn_key
session_key = store_module._session_key


class HistoryView:
    """The store, read as flat message lists (what most of these tests compare)."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def history(self, tenant: str, session_id: str) -> list[StoredMessage]:
        _, turns = await self.store.context(tenant, session_id)
        return [m for t in turns for m in t.messages]

    async def append(
        self, tenant: str, session_id: str, turn_id: str, messages: list[StoredMessage]
    ) -> tuple[bool, int]:
        appended, stored, _ = await self.store.append(tenant, session_id, turn_id, messages)
        return appended, stored

    async def delete(self, tenant: str, session_id: str) -> bool:
        return await self.store.delete_session(tenant, session_id)

    async def ping(self) -> bool:
        return await self.store.ping()


@pytest.fixture
async def raw_store(valkey_url: str) -> AsyncIterator[SessionStore]:
    session_store = SessionStore.from_url(valkey_url, TTL_S, MAX_TURNS)
    try:
        yield session_store
    finally:
        await session_store.close()


@pytest.fixture
def store(raw_store: SessionStore) -> HistoryView:
    return HistoryView(raw_store)


def turn(user: str, assistant: str) -> list[StoredMessage]:
    return [StoredMessage(role="user", content=user), StoredMessage(role="assistant", content=assistant)]


@pytest.mark.parametrize(
    ("tenant_name", "session_id"), [("acme", "s1"), ("a}b", "{x}"), ("", ""), ("t", "s/with/slashes")]
)
def test_keys_of_one_session_share_a_cluster_slot(tenant_name: str, session_id: str) -> None:
    # The append script touches the history and the turn marker together: one slot in Redis Cluster.
    history_slot = key_slot(history_key(tenant_name, session_id).encode())

    assert key_slot(turn_key(tenant_name, session_id, "turn-1").encode()) == history_slot
    assert key_slot(turn_key(tenant_name, session_id, "other-turn").encode()) == history_slot


async def test_ping(store: HistoryView) -> None:
    assert await store.ping() is True


async def test_history_of_unknown_session_is_empty(store: HistoryView, tenant: str) -> None:
    assert await store.history(tenant, "never-written") == []


async def test_append_then_history_round_trips_every_field(store: HistoryView, tenant: str) -> None:
    messages = [
        StoredMessage(role="user", content="What's the weather in Paris?", name="alice"),
        StoredMessage(
            role="assistant",
            content="",
            tool_calls_json='[{"id": "call_1", "type": "function", "function": {"name": "weather"}}]',
        ),
        StoredMessage(role="tool", content='{"temp_c": 21}', tool_call_id="call_1"),
        StoredMessage(role="assistant", content="It is 21 °C — sunny ☀️."),
    ]

    appended, stored = await store.append(tenant, "s1", "turn-1", messages)

    assert (appended, stored) == (True, 1)
    assert await store.history(tenant, "s1") == messages


async def test_turns_accumulate_oldest_first(store: HistoryView, tenant: str) -> None:
    first, second = turn("hi", "hello"), turn("how are you?", "fine")

    assert await store.append(tenant, "s1", "turn-1", first) == (True, 1)
    assert await store.append(tenant, "s1", "turn-2", second) == (True, 2)

    assert await store.history(tenant, "s1") == [*first, *second]


async def test_append_is_idempotent_on_turn_id(store: HistoryView, tenant: str) -> None:
    messages = turn("hi", "hello")

    first = await store.append(tenant, "s1", "turn-1", messages)
    retry = await store.append(tenant, "s1", "turn-1", messages)

    assert first == (True, 1)
    assert retry == (False, 1)
    assert await store.history(tenant, "s1") == messages


async def test_retry_with_different_content_stores_nothing(store: HistoryView, tenant: str) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))

    assert await store.append(tenant, "s1", "turn-1", turn("other", "text")) == (False, 1)
    assert [m.content for m in await store.history(tenant, "s1")] == ["hi", "hello"]


async def test_append_sets_ttl_on_history_and_turn_marker(
    store: HistoryView, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))

    history_ttl = await redis_client.ttl(history_key(tenant, "s1"))
    marker_ttl = await redis_client.ttl(turn_key(tenant, "s1", "turn-1"))

    assert TTL_S - 5 <= history_ttl <= TTL_S
    assert TTL_S - 5 <= marker_ttl <= TTL_S


async def test_append_refreshes_ttl_even_for_a_retried_turn(
    store: HistoryView, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))
    await redis_client.expire(history_key(tenant, "s1"), 30)

    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))

    assert await redis_client.ttl(history_key(tenant, "s1")) > 30


async def test_reading_history_keeps_the_session_alive(
    store: HistoryView, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))
    await redis_client.expire(history_key(tenant, "s1"), 30)

    await store.history(tenant, "s1")

    assert TTL_S - 5 <= await redis_client.ttl(history_key(tenant, "s1")) <= TTL_S


async def test_delete_purges_history_and_turn_markers(
    store: HistoryView, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("a", "b"))
    await store.append(tenant, "s1", "turn-2", turn("c", "d"))
    assert await redis_client.exists(turn_key(tenant, "s1", "turn-1"), turn_key(tenant, "s1", "turn-2")) == 2

    assert await store.delete(tenant, "s1") is True
    await asyncio.sleep(0.002)  # a turn that starts after the deletion is a new turn

    assert await redis_client.exists(history_key(tenant, "s1")) == 0
    # Only the deletion mark is left (it refuses turns that started before the deletion).
    assert [key async for key in redis_client.scan_iter(match=f"llmmesh:*{tenant}*")] == [
        store_module._deleted_key(tenant, "s1")
    ]
    assert await store.history(tenant, "s1") == []
    # The markers are gone too: the same turn id is a new turn again.
    assert await store.append(tenant, "s1", "turn-1", turn("a", "b")) == (True, 1)


async def test_delete_of_unknown_session_reports_nothing_deleted(store: HistoryView, tenant: str) -> None:
    assert await store.delete(tenant, "never-written") is False


async def test_delete_leaves_other_sessions_alone(
    store: HistoryView, redis_client: aioredis.Redis, tenant: str
) -> None:
    kept = turn("keep", "me")
    await store.append(tenant, "s1", "turn-1", turn("a", "b"))
    await store.append(tenant, "s10", "turn-1", kept)

    await store.delete(tenant, "s1")

    assert await store.history(tenant, "s10") == kept
    assert await redis_client.exists(turn_key(tenant, "s10", "turn-1")) == 1


async def test_delete_escapes_glob_characters_of_the_session_id(
    store: HistoryView, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s*", "turn-1", turn("a", "b"))
    await store.append(tenant, "s1", "turn-1", turn("c", "d"))
    await store.append(tenant, "s?", "turn-1", turn("e", "f"))

    assert await store.delete(tenant, "s*") is True

    assert await store.history(tenant, "s*") == []
    assert await redis_client.exists(turn_key(tenant, "s*", "turn-1")) == 0
    # A glob `s*` would have matched these two as well.
    assert await redis_client.exists(turn_key(tenant, "s1", "turn-1"), turn_key(tenant, "s?", "turn-1")) == 2
    assert len(await store.history(tenant, "s1")) == 2


async def test_tenants_are_isolated(store: HistoryView, tenant: str) -> None:
    other = f"{tenant}-other"
    await store.append(tenant, "shared-session", "turn-1", turn("mine", "yours"))
    await store.append(other, "shared-session", "turn-1", turn("theirs", "ok"))

    assert [m.content for m in await store.history(tenant, "shared-session")] == ["mine", "yours"]
    assert [m.content for m in await store.history(other, "shared-session")] == ["theirs", "ok"]

    await store.delete(other, "shared-session")
    assert [m.content for m in await store.history(tenant, "shared-session")] == ["mine", "yours"]


async def test_sessions_of_one_tenant_are_isolated(store: HistoryView, tenant: str) -> None:
    await store.append(tenant, "s1", "turn-1", turn("one", "1"))
    # Same turn id in another session is a different turn, not a retry.
    assert await store.append(tenant, "s2", "turn-1", turn("two", "2")) == (True, 1)

    assert [m.content for m in await store.history(tenant, "s1")] == ["one", "1"]
    assert [m.content for m in await store.history(tenant, "s2")] == ["two", "2"]


async def test_slash_in_tenant_or_session_does_not_merge_histories(store: HistoryView, tenant: str) -> None:
    await store.append(tenant, "x/y", "turn-1", turn("tenant A, session x/y", "a"))

    assert await store.history(f"{tenant}/x", "y") == []


async def test_delete_keeps_turn_markers_of_a_session_whose_id_extends_the_tag(
    store: HistoryView, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s", "turn-1", turn("a", "b"))
    await store.append(tenant, "s}:x", "turn-1", turn("c", "d"))

    await store.delete(tenant, "s")

    assert await redis_client.exists(turn_key(tenant, "s}:x", "turn-1")) == 1


async def test_stored_turns_are_capped_oldest_first(raw_store: SessionStore, tenant: str) -> None:
    for i in range(MAX_TURNS + 3):
        await raw_store.append(tenant, "s1", f"turn-{i}", turn(f"q{i}", f"a{i}"))

    session, turns = await raw_store.context(tenant, "s1")

    assert session is not None
    assert [t.seq for t in turns] == list(range(4, MAX_TURNS + 4))
    assert session.seq == MAX_TURNS + 3


async def test_window_start_only_moves_forward(raw_store: SessionStore, tenant: str) -> None:
    await raw_store.append(tenant, "s1", "turn-1", turn("a", "b"), window_start=3)
    await raw_store.append(tenant, "s1", "turn-2", turn("c", "d"), window_start=2)

    session, _ = await raw_store.context(tenant, "s1")

    assert session is not None
    assert session.window == 3


async def test_a_turn_started_before_the_deletion_is_refused(raw_store: SessionStore, tenant: str) -> None:
    await raw_store.append(tenant, "s1", "turn-1", turn("a", "b"))
    started = int(time.time() * 1000) - 1000
    await raw_store.delete_session(tenant, "s1")

    with pytest.raises(SessionDeletedError):
        await raw_store.append(tenant, "s1", "turn-2", turn("late", "x"), started_at_ms=started)

    assert await raw_store.session(tenant, "s1") is None


async def test_every_stored_turn_is_queued_for_indexing(raw_store: SessionStore, tenant: str) -> None:
    await raw_store.ensure_queue()
    await raw_store.append(tenant, "s1", "turn-1", turn("a", "b"), user="u1")

    claimed = [e for e in await raw_store.claim("c1", 100, 0, 60_000) if e.tenant == tenant]

    assert [(e.session_id, e.turn_id, e.seq, e.user) for e in claimed] == [("s1", "turn-1", 1, "u1")]
    assert claimed[0].messages == turn("a", "b")
    await raw_store.done([e.entry_id for e in claimed])
    assert await raw_store.unqueue(tenant, "s1") == 0


async def test_unqueue_removes_only_that_sessions_entries(raw_store: SessionStore, tenant: str) -> None:
    await raw_store.append(tenant, "gone", "turn-1", turn("a", "b"))
    await raw_store.append(tenant, "kept", "turn-1", turn("c", "d"))

    assert await raw_store.unqueue(tenant, "gone") == 1
    assert await raw_store.unqueue(tenant, "kept") == 1


async def test_session_metadata_round_trips(raw_store: SessionStore, tenant: str) -> None:
    assert await raw_store.upsert_session(tenant, "s1", system_prompt="Be terse.", metadata={"k": "v"}) is True
    assert await raw_store.upsert_session(tenant, "s1", system_prompt="Be kind.") is False

    info = await raw_store.session(tenant, "s1")

    assert info is not None
    assert (info.system_prompt, info.metadata, info.turns) == ("Be kind.", {"k": "v"}, 0)


async def test_forgetting_a_message_blanks_it_in_the_history(raw_store: SessionStore, tenant: str) -> None:
    await raw_store.append(tenant, "s1", "turn-1", turn("my pin is 1234", "noted"))

    assert await raw_store.forget_message(tenant, "s1", "turn-1", "my pin is 1234") is True

    _, turns = await raw_store.context(tenant, "s1")
    assert [m.content for m in turns[0].messages] == ["[forgotten]", "noted"]


async def test_a_refused_turn_is_queued_but_not_live(raw_store: SessionStore, tenant: str) -> None:
    """The queue entry is written in the append's round trip whatever the script decides; the
    indexer must find a refused turn (session deleted after the turn started) not live."""
    await raw_store.ensure_queue()
    started = int(time.time() * 1000) - 1000
    await raw_store.append(tenant, "s1", "turn-1", turn("a", "b"))
    await raw_store.delete_session(tenant, "s1")
    with pytest.raises(SessionDeletedError):
        await raw_store.append(tenant, "s1", "turn-2", turn("late", "x"), started_at_ms=started)
    await raw_store.append(tenant, "s2", "turn-3", turn("c", "d"))

    claimed = {e.turn_id: e for e in await raw_store.claim("c1", 100, 0, 60_000) if e.tenant == tenant}
    await raw_store.done([e.entry_id for e in claimed.values()])

    assert not claimed["turn-1"].live  # its session was deleted after it started
    assert (claimed["turn-2"].live, claimed["turn-2"].seq) == (False, 0)  # never stored
    assert (claimed["turn-3"].live, claimed["turn-3"].seq) == (True, 1)
