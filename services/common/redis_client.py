"""The one way a service opens its Redis-protocol client.

redis-py's default pool holds at most 100 connections and fails the 101st call at once
("Too many connections"): a gateway taking a burst of 64 new streams (key lookup, limits and
usage each borrow one) hit it and answered 503s. A blocking pool makes a call wait for a free
connection instead, up to the same timeout as a slow server, and the cap is a setting.
"""

from __future__ import annotations

import redis.asyncio as redis

MAX_CONNECTIONS = 512


def redis_client(url: str, timeout_s: float, max_connections: int = MAX_CONNECTIONS) -> redis.Redis:
    """A client with string replies, `timeout_s` for connecting, each reply and waiting for a
    free connection from its pool."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    return redis.Redis(connection_pool=pool)
