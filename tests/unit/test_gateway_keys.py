"""The API key store against a real Redis-protocol server: keys are kept hashed, looked up,
listed by tenant and revoked at once; and the LLMMESH_API_KEYS seed format."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.common.keys import KEY_PREFIX, KeyStore, digest, parse_seed


@pytest.fixture
async def store(valkey_url: str) -> AsyncIterator[KeyStore]:
    key_store = KeyStore.from_url(valkey_url)
    try:
        yield key_store
    finally:
        await key_store.close()


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def _everything_stored(client: aioredis.Redis) -> str:
    """Every key name and value in the server, as one text to search."""
    parts: list[object] = []
    async for name in client.scan_iter(count=500):
        parts.append(name)
        kind = await client.type(name)
        if kind == "string":
            parts.append(await client.get(name))
        elif kind == "hash":
            for field, value in (await client.hgetall(name)).items():
                parts += [field, value]
        elif kind == "list":
            parts += await client.lrange(name, 0, -1)
        elif kind == "set":
            parts += await client.smembers(name)
        elif kind == "zset":
            parts += await client.zrange(name, 0, -1)
        else:  # anything else, serialized
            parts.append(await client.dump(name))
    return "\n".join(map(_text, parts))


async def test_create_then_lookup(store: KeyStore, tenant: str) -> None:
    key, info = await store.create(tenant, "ci")
    assert key.startswith(KEY_PREFIX)
    assert len(key) > 40
    assert info.id.startswith("key_")
    assert info.tenant == tenant
    assert info.name == "ci"
    assert info.created_at > 0
    assert info.hint
    assert key.startswith(info.hint)
    assert len(info.hint) < len(key) // 2

    found = await store.lookup(key)
    assert found == info
    assert await store.lookup(key + "x") is None
    assert await store.lookup("") is None

    other_key, other = await store.create(tenant)
    assert other_key != key
    assert other.id != info.id


async def test_the_key_itself_is_never_stored(store: KeyStore, redis_client: aioredis.Redis, tenant: str) -> None:
    key, info = await store.create(tenant, "stored hashed")
    # A short seeded key (letters that no hex digest holds): not even its hint may give it away.
    short_key = "k" + tenant[-6:].translate(str.maketrans("0123456789abcdef", "ghijklmnopqrstuv"))
    short = await store.add(short_key, tenant, "a short seeded key")
    assert await store.lookup(short_key) == short

    stored = await _everything_stored(redis_client)
    assert digest(key) in stored
    assert info.id in stored
    assert digest(short_key) in stored
    assert key not in stored
    assert key[len(KEY_PREFIX) :] not in stored
    assert short_key not in stored
    assert len(short.hint) <= len(short_key) // 4


async def test_revoke_refuses_the_key_at_once(store: KeyStore, tenant: str) -> None:
    key, info = await store.create(tenant)
    kept_key, kept = await store.create(tenant)

    assert await store.revoke(info.id) is True
    assert await store.lookup(key) is None
    assert [k.id for k in await store.list(tenant)] == [kept.id]
    assert await store.lookup(kept_key) == kept

    assert await store.revoke(info.id) is False  # already gone


async def test_revoke_unknown_id(store: KeyStore) -> None:
    assert await store.revoke("key_0000000000000000") is False
    assert await store.revoke("") is False


async def test_list_filters_by_tenant_and_never_holds_keys(store: KeyStore, tenant: str) -> None:
    other_tenant = tenant + "-other"
    first_key, first = await store.create(tenant, "first")
    second_key, second = await store.create(tenant, "second")
    other_key, other = await store.create(other_tenant, "other")

    mine = await store.list(tenant)
    assert {k.id for k in mine} == {first.id, second.id}
    assert all(k.tenant == tenant for k in mine)
    assert [k.id for k in await store.list(other_tenant)] == [other.id]

    everyone = {k.id for k in await store.list()}
    assert {first.id, second.id, other.id} <= everyone

    listed = repr(await store.list())
    for key in (first_key, second_key, other_key):
        assert key not in listed

    assert await store.list(tenant + "-nobody") == []


async def test_add_is_idempotent(store: KeyStore, redis_client: aioredis.Redis, tenant: str) -> None:
    key = f"seeded-{tenant}-key"
    added = await store.add(key, tenant, "seeded")
    again = await store.add(key, tenant + "-elsewhere", "renamed")
    assert again == added  # the record is kept as it was
    assert await store.lookup(key) == added
    assert [k.id for k in await store.list(tenant)] == [added.id]
    assert await store.list(tenant + "-elsewhere") == []
    assert await redis_client.hget("llmmesh:apikeys", added.id) == digest(key)

    assert await store.revoke(added.id) is True
    readded = await store.add(key, tenant)  # a revoked key can be stored again
    assert readded.id == added.id
    assert await store.lookup(key) == readded


@pytest.mark.parametrize(("key", "tenant"), [("", "t"), ("k", "")])
async def test_add_needs_a_key_and_a_tenant(store: KeyStore, key: str, tenant: str) -> None:
    with pytest.raises(ValueError, match="required"):
        await store.add(key, tenant)


def test_parse_seed() -> None:
    assert parse_seed("a", "default") == [("a", "default")]
    assert parse_seed("a:t1, b:t2", "default") == [("a", "t1"), ("b", "t2")]
    assert parse_seed(" a , ,b:t2,, c: ", "d") == [("a", "d"), ("b", "t2"), ("c", "d")]
    assert parse_seed("", "d") == []
    assert parse_seed(" , ,", "d") == []


@pytest.mark.parametrize("entries", [":t", "a, :t", " : t"])
def test_parse_seed_rejects_an_entry_without_a_key(entries: str) -> None:
    with pytest.raises(ValueError, match="without a key"):
        parse_seed(entries, "default")
