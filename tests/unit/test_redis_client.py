"""The services' Redis client waits for a free connection instead of failing a burst."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from services.common.redis_client import redis_client


async def test_a_burst_beyond_the_pool_waits_for_connections(valkey_url: str) -> None:
    client = redis_client(valkey_url, timeout_s=5.0, max_connections=4)
    try:
        # Each call holds its connection for 50 ms: 64 of them need to take turns on 4.
        replies = await asyncio.gather(*(client.blpop([f"nothing-{i}"], timeout=0.05) for i in range(64)))
    finally:
        await client.aclose()

    assert replies == [None] * 64


async def test_redis_pys_default_pool_fails_the_same_burst(valkey_url: str) -> None:
    """What the blocking pool is for: the default pool refuses the call past its cap at once."""
    client = redis.Redis.from_url(valkey_url, max_connections=4)
    try:
        with pytest.raises(redis.ConnectionError):
            await asyncio.gather(*(client.blpop([f"nothing-{i}"], timeout=0.05) for i in range(64)))
    finally:
        await client.aclose()
