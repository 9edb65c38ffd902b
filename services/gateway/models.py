"""GET /v1/models and /v1/models/{id}: the chat models the router serves, and the embedding model."""

from __future__ import annotations

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

    async def model_objects() -> list[dict[str, Any]]:
        models = [
            {"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by} for m in await pipeline.list_models()
        ]
        models.append({"id": settings.embedding_model, "object": "model", "created": 0, "owned_by": "llmmesh"})
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
