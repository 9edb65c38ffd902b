"""The memory store's response records and turn forgetting, on a real Redis-protocol server:
records live and die with their session, are keyed by tenant, and a forgotten message leaves a
placeholder that keeps the other messages' positions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.memory.store import SessionStore, StoredMessage, tag


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[SessionStore]:
    opened = SessionStore.from_url(valkey_url, ttl_s=600, max_turns=50)
    try:
        yield opened
    finally:
        await opened.close()


def _messages(*texts: str) -> list[StoredMessage]:
    return [StoredMessage(role="user" if i % 2 == 0 else "assistant", content=t) for i, t in enumerate(texts)]


async def test_a_record_lives_with_its_session(store: SessionStore, tenant: str, redis_client: aioredis.Redis) -> None:
    await store.append(tenant, "s1", "t1", _messages("hi", "hello"))
    await store.put_response(tenant, "s1", "resp_a", '{"id": "resp_a"}')

    assert await store.response(tenant, "resp_a") == '{"id": "resp_a"}'
    assert await store.response("another-tenant", "resp_a") is None
    keys = await redis_client.keys(f"llmmesh:response:{tag(tenant, 's1')}:*")
    assert len(keys) == 1
    assert await redis_client.ttl(keys[0]) > 0

    await store.delete_session(tenant, "s1")

    assert await store.response(tenant, "resp_a") is None
    assert await redis_client.hget(f"llmmesh:responses:{{{tenant}}}", "resp_a") is None


async def test_delete_response_returns_the_record_once(store: SessionStore, tenant: str) -> None:
    await store.put_response(tenant, "s1", "resp_b", "{}")
    assert await store.delete_response(tenant, "resp_b") == "{}"
    assert await store.delete_response(tenant, "resp_b") is None
    assert await store.response(tenant, "resp_b") is None


async def test_forget_a_message_keeps_positions_and_a_turn_goes_whole(store: SessionStore, tenant: str) -> None:
    await store.append(tenant, "s1", "t1", _messages("one", "two", "three"))
    await store.append(tenant, "s1", "t2", _messages("four", "five"))

    assert await store.forget_turn(tenant, "s1", "t1", 1) == 3
    _, turns = await store.context(tenant, "s1")
    assert [m.content for m in turns[0].messages] == ["one", "", "three"]
    assert turns[0].messages[1].role == ""
    assert await store.forget_turn(tenant, "s1", "t1", 1) == -1  # already a placeholder
    assert await store.forget_turn(tenant, "s1", "t1", 7) == -1

    assert await store.forget_turn(tenant, "s1", "t1", None) == 3
    _, turns = await store.context(tenant, "s1")
    assert [t.turn_id for t in turns] == ["t2"]
    assert await store.forget_turn(tenant, "s1", "t1", None) == -1
    # The turn marker stays: a retried append of the forgotten turn stores nothing.
    appended, _, _ = await store.append(tenant, "s1", "t1", _messages("one", "two", "three"))
    assert not appended
