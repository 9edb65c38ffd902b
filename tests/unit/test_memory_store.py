"""HistoryStore against a real Redis-protocol server (valkey-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from services.memory.store import HistoryStore, StoredMessage

TTL_S = 600


# The store's own key names, so these tests keep working if the key encoding changes.
history_key = HistoryStore._history_key
turn_key = HistoryStore._turn_key


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[HistoryStore]:
    history_store = HistoryStore.from_url(valkey_url, TTL_S)
    try:
        yield history_store
    finally:
        await history_store.close()


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


async def test_ping(store: HistoryStore) -> None:
    assert await store.ping() is True


async def test_history_of_unknown_session_is_empty(store: HistoryStore, tenant: str) -> None:
    assert await store.history(tenant, "never-written") == []


async def test_append_then_history_round_trips_every_field(store: HistoryStore, tenant: str) -> None:
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

    assert (appended, stored) == (True, 4)
    assert await store.history(tenant, "s1") == messages


async def test_turns_accumulate_oldest_first(store: HistoryStore, tenant: str) -> None:
    first, second = turn("hi", "hello"), turn("how are you?", "fine")

    assert await store.append(tenant, "s1", "turn-1", first) == (True, 2)
    assert await store.append(tenant, "s1", "turn-2", second) == (True, 4)

    assert await store.history(tenant, "s1") == [*first, *second]


async def test_append_is_idempotent_on_turn_id(store: HistoryStore, tenant: str) -> None:
    messages = turn("hi", "hello")

    first = await store.append(tenant, "s1", "turn-1", messages)
    retry = await store.append(tenant, "s1", "turn-1", messages)

    assert first == (True, 2)
    assert retry == (False, 2)
    assert await store.history(tenant, "s1") == messages


async def test_retry_with_different_content_stores_nothing(store: HistoryStore, tenant: str) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))

    assert await store.append(tenant, "s1", "turn-1", turn("other", "text")) == (False, 2)
    assert [m.content for m in await store.history(tenant, "s1")] == ["hi", "hello"]


async def test_append_sets_ttl_on_history_and_turn_marker(
    store: HistoryStore, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))

    history_ttl = await redis_client.ttl(history_key(tenant, "s1"))
    marker_ttl = await redis_client.ttl(turn_key(tenant, "s1", "turn-1"))

    assert TTL_S - 5 <= history_ttl <= TTL_S
    assert TTL_S - 5 <= marker_ttl <= TTL_S


async def test_append_refreshes_ttl_even_for_a_retried_turn(
    store: HistoryStore, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))
    await redis_client.expire(history_key(tenant, "s1"), 30)

    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))

    assert await redis_client.ttl(history_key(tenant, "s1")) > 30


async def test_reading_history_keeps_the_session_alive(
    store: HistoryStore, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("hi", "hello"))
    await redis_client.expire(history_key(tenant, "s1"), 30)

    await store.history(tenant, "s1")

    assert TTL_S - 5 <= await redis_client.ttl(history_key(tenant, "s1")) <= TTL_S


async def test_delete_purges_history_and_turn_markers(
    store: HistoryStore, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s1", "turn-1", turn("a", "b"))
    await store.append(tenant, "s1", "turn-2", turn("c", "d"))
    assert await redis_client.exists(turn_key(tenant, "s1", "turn-1"), turn_key(tenant, "s1", "turn-2")) == 2

    assert await store.delete(tenant, "s1") is True

    assert await redis_client.exists(history_key(tenant, "s1")) == 0
    assert [key async for key in redis_client.scan_iter(match=f"llmmesh:*{tenant}*")] == []
    assert await store.history(tenant, "s1") == []
    # The markers are gone too: the same turn id is a new turn again.
    assert await store.append(tenant, "s1", "turn-1", turn("a", "b")) == (True, 2)


async def test_delete_of_unknown_session_reports_nothing_deleted(store: HistoryStore, tenant: str) -> None:
    assert await store.delete(tenant, "never-written") is False


async def test_delete_leaves_other_sessions_alone(
    store: HistoryStore, redis_client: aioredis.Redis, tenant: str
) -> None:
    kept = turn("keep", "me")
    await store.append(tenant, "s1", "turn-1", turn("a", "b"))
    await store.append(tenant, "s10", "turn-1", kept)

    await store.delete(tenant, "s1")

    assert await store.history(tenant, "s10") == kept
    assert await redis_client.exists(turn_key(tenant, "s10", "turn-1")) == 1


async def test_delete_escapes_glob_characters_of_the_session_id(
    store: HistoryStore, redis_client: aioredis.Redis, tenant: str
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


async def test_tenants_are_isolated(store: HistoryStore, tenant: str) -> None:
    other = f"{tenant}-other"
    await store.append(tenant, "shared-session", "turn-1", turn("mine", "yours"))
    await store.append(other, "shared-session", "turn-1", turn("theirs", "ok"))

    assert [m.content for m in await store.history(tenant, "shared-session")] == ["mine", "yours"]
    assert [m.content for m in await store.history(other, "shared-session")] == ["theirs", "ok"]

    await store.delete(other, "shared-session")
    assert [m.content for m in await store.history(tenant, "shared-session")] == ["mine", "yours"]


async def test_sessions_of_one_tenant_are_isolated(store: HistoryStore, tenant: str) -> None:
    await store.append(tenant, "s1", "turn-1", turn("one", "1"))
    # Same turn id in another session is a different turn, not a retry.
    assert await store.append(tenant, "s2", "turn-1", turn("two", "2")) == (True, 2)

    assert [m.content for m in await store.history(tenant, "s1")] == ["one", "1"]
    assert [m.content for m in await store.history(tenant, "s2")] == ["two", "2"]


async def test_slash_in_tenant_or_session_does_not_merge_histories(store: HistoryStore, tenant: str) -> None:
    await store.append(tenant, "x/y", "turn-1", turn("tenant A, session x/y", "a"))

    assert await store.history(f"{tenant}/x", "y") == []


async def test_delete_keeps_turn_markers_of_a_session_whose_id_extends_the_tag(
    store: HistoryStore, redis_client: aioredis.Redis, tenant: str
) -> None:
    await store.append(tenant, "s", "turn-1", turn("a", "b"))
    await store.append(tenant, "s}:x", "turn-1", turn("c", "d"))

    await store.delete(tenant, "s")

    assert await redis_client.exists(turn_key(tenant, "s}:x", "turn-1")) == 1
