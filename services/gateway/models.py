"""GET /v1/models and /v1/models/{id}: the chat models the router serves, and the embedding model.

`created` is when the model became servable (the inference service's load of it, or of its
backend's configuration; for the embedding model, this gateway's start), stable across calls;
`max_model_len` (vLLM's name) its context length, where known."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends

from services.gateway.errors import APIError
from services.gateway.pipeline import ChatPipeline
from services.gateway.settings import GatewaySettings


def create_router(
    settings: GatewaySettings, pipeline: ChatPipeline, tenant: Callable[..., Awaitable[str]]
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(tenant)])
    started = int(time.time())

    async def model_objects() -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = []
        for m in await pipeline.list_models():
            model = {"id": m.id, "object": "model", "created": m.created or started, "owned_by": m.owned_by}
            if m.context_length:
                model["max_model_len"] = m.context_length
            models.append(model)
        models.append({"id": settings.embedding_model, "object": "model", "created": started, "owned_by": "llmmesh"})
        return models

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": await model_objects()}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for model in await model_objects():
            if model["id"] == model_id:
                return model
        raise APIError(
            404, f"The model `{model_id}` does not exist.", "invalid_request_error", "model_not_found", "model"
        )

    return router
