"""POST /v1/embeddings: OpenAI's embeddings API over the mesh's one embedding model (the
inference service's Embed RPC, all-MiniLM-L6-v2, 384 dimensions)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from llmmesh.inference.v1 import inference_pb2
from services.common.context import call_metadata
from services.gateway.auth import Caller
from services.gateway.clients import MeshClients
from services.gateway.errors import APIError
from services.gateway.settings import GatewaySettings
from services.gateway.usage import UsageStore

MAX_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)

    def texts(self) -> list[str]:
        """The inputs as texts; token arrays and empty strings are refused, as OpenAI does for
        what a model cannot take."""
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise APIError.invalid("'input' must not be empty.", "input")
        if len(items) > MAX_INPUTS:
            raise APIError.invalid(f"'input' may hold at most {MAX_INPUTS} items.", "input")
        if not all(isinstance(item, str) for item in items):
            raise APIError.invalid("Token arrays are not supported as 'input': send text.", "input")
        texts = [item for item in items if isinstance(item, str)]
        if any(not text for text in texts):
            raise APIError.invalid("'input' must not contain empty strings.", "input")
        return texts


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def create_router(
    settings: GatewaySettings, clients: MeshClients, caller: Callable[..., Awaitable[Caller]], usage: UsageStore
) -> APIRouter:
    router = APIRouter(tags=["embeddings"])

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        if body.model != settings.embedding_model:
            raise APIError(
                404,
                f"The model `{body.model}` does not exist or is not an embedding model; "
                f"embeddings are served by `{settings.embedding_model}`.",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        texts = body.texts()
        reply = await clients.inference.Embed(
            inference_pb2.EmbedRequest(texts=texts), timeout=settings.upstream_timeout_s, metadata=call_metadata()
        )
        if body.dimensions is not None and body.dimensions != reply.dimensions:
            raise APIError.invalid(
                f"`{body.model}` has {reply.dimensions} dimensions and cannot shorten them to {body.dimensions}.",
                "dimensions",
            )
        usage.record(caller_, body.model, reply.prompt_tokens, 0)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(list(e.values), body.encoding_format)}
                for i, e in enumerate(reply.embeddings)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
        }

    return router
