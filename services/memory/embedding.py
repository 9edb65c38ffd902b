"""Embeddings for the memory service, from the one model the mesh loads (the inference
service's Embed RPC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc

from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.context import call_metadata


class EmbeddingUnavailableError(Exception):
    """The embedding model could not be reached."""


class Embeddings(Protocol):
    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class RemoteEmbeddings:
    """Embeds through the inference service; `background` for work nobody waits for (the
    inference service computes it below serving, so give it a longer timeout)."""

    def __init__(
        self, stub: inference_pb2_grpc.InferenceServiceStub, timeout_s: float, background: bool = False
    ) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._background = background

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        try:
            reply = await self._stub.Embed(
                inference_pb2.EmbedRequest(texts=list(texts), background=self._background),
                timeout=self._timeout_s,
                metadata=call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise EmbeddingUnavailableError(f"{exc.code().name}: {exc.details()}") from None
        return [list(e.values) for e in reply.embeddings]
