"""The memory service's one mapping of a dependency that went away to UNAVAILABLE."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as redis

from services.memory.core import dependency_unavailable
from services.memory.embedding import EmbeddingUnavailableError
from services.memory.vectors import VectorStoreUnavailable


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (redis.ConnectionError("refused"), "memory_unavailable"),
        (redis.TimeoutError("slow"), "memory_unavailable"),
        (VectorStoreUnavailable("qdrant is away"), "memory_unavailable"),
        (EmbeddingUnavailableError("UNAVAILABLE"), "embedding_unavailable"),
    ],
)
def test_dependencies_that_went_away_are_unavailable(exc: Exception, reason: str) -> None:
    error = dependency_unavailable(exc)

    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, reason)


def test_anything_else_is_left_to_the_common_mapping() -> None:
    assert dependency_unavailable(RuntimeError("a bug")) is None
    assert dependency_unavailable(ValueError("bad")) is None
