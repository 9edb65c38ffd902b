"""Sentence embeddings for routing, from the mesh's one embedding model (the inference
service's Embed RPC).

A request never fails for want of an embedding: a query that cannot be embedded in time is
routed by the keyword rules, and after a failure the router stops asking for a while, so an
unreachable inference service costs one timeout, not one per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc
import numpy as np
from prometheus_client import Counter

from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.context import call_metadata
from services.router.policy import Vector

log = logging.getLogger(__name__)

FALLBACKS = Counter(
    "llmmesh_router_embed_fallbacks_total",
    "Requests routed without the query's embedding (keyword rules and the default agent), by cause.",
    ["cause"],
)


class EmbeddingUnavailableError(Exception):
    """The embedding model could not be reached."""


class RoutingEmbeddings:
    def __init__(self, stub: inference_pb2_grpc.InferenceServiceStub, timeout_s: float, pause_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._pause_s = pause_s
        self._paused_until = 0.0

    async def embed(self, texts: Sequence[str], timeout_s: float) -> list[list[float]]:
        """One vector per text; EmbeddingUnavailableError when the service cannot answer."""
        try:
            reply = await self._stub.Embed(
                inference_pb2.EmbedRequest(texts=list(texts)), timeout=timeout_s, metadata=call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise EmbeddingUnavailableError(f"{exc.code().name}: {exc.details()}") from None
        return [list(e.values) for e in reply.embeddings]

    async def query(self, text: str) -> Vector | None:
        """The query's vector, or None (logged and counted) when it cannot be had quickly."""
        if time.monotonic() < self._paused_until:
            FALLBACKS.labels("paused").inc()
            return None
        try:
            (vector,) = await self.embed([text], self._timeout_s)
        except EmbeddingUnavailableError as exc:
            self._paused_until = time.monotonic() + self._pause_s
            FALLBACKS.labels("unavailable").inc()
            log.warning("routing without embeddings", extra={"error": str(exc), "pause_s": self._pause_s})
            return None
        self._paused_until = 0.0
        return np.asarray(vector, dtype=np.float32)
