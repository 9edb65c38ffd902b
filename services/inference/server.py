"""Inference service bootstrap: read the backends file, prepare the model, start the engines,
serve."""

from __future__ import annotations

import asyncio

import grpc

from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.errors import MeshError
from services.common.server import ServiceSpec, serve
from services.inference.backends.config import BackendConfigError, load_backends
from services.inference.backends.cooldown import Cooldowns
from services.inference.backends.registry import BackendRegistry, external_backend
from services.inference.domain import Backend, PromptLimits
from services.inference.embedder import Embedder
from services.inference.engine import EnginePool
from services.inference.instant import InstantBackend, Pacing
from services.inference.model_store import prepare_default_model
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


def translate_error(exc: Exception) -> MeshError | None:
    """What vLLM rejects because of the request (a schema its grammar engine cannot take, ...) is
    the client's error, not ours."""
    if type(exc).__module__.startswith("vllm"):
        from vllm.exceptions import VLLMClientError

        if isinstance(exc, VLLMClientError):
            return MeshError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "invalid_request_error")
    return None


async def main() -> None:
    settings = InferenceSettings()
    limits = PromptLimits(settings.completion_reserve_tokens, settings.recall_max_tokens, settings.tool_parser)
    # A bad backends file or a missing key stops the service here, before any model is loaded.
    try:
        externals = [external_backend(b, limits) for b in load_backends(settings.backends_file).enabled]
    except BackendConfigError as exc:
        raise SystemExit(f"inference: {exc}") from None
    holder: dict[str, BackendRegistry] = {}
    embedders: list[Embedder] = []

    async def startup() -> None:
        if settings.embeddings:
            embedders.append(await asyncio.to_thread(Embedder.load, precision=settings.embedding_precision))
        local: Backend
        if settings.backend == "instant":
            pacing = Pacing(settings.instant_tokens_per_s, settings.instant_ttft_ms, settings.instant_max_streams)
            local = InstantBackend(settings.served_model_name, pacing=pacing)
        else:
            model_path = settings.model_path
            if model_path is None:
                model_path = await asyncio.to_thread(prepare_default_model, settings.cache_dir)
            local = EnginePool.start(settings, model_path)
        cooldowns = Cooldowns(settings.backend_failures_to_cool, settings.backend_cooldown_s)
        holder["pool"] = BackendRegistry(local, settings.backend, externals, cooldowns)

    async def shutdown() -> None:
        for backend in externals:
            await backend.aclose()
        if "pool" in holder:
            holder["pool"].shutdown()

    def register(server: object) -> None:
        pool = holder["pool"]
        if embedders and settings.background_embed_max_defer_s > 0:
            embedders[0].defer_background(pool.generating, settings.background_embed_max_defer_s)
        servicer = InferenceServicer(pool, embedders[0] if embedders else None, settings.stream_interval_ms / 1000)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)

    spec = ServiceSpec(
        name="inference", grpc_services=[SERVICE_NAME], register=register, translate_error=translate_error
    )
    await serve(spec, settings, startup=startup, shutdown=shutdown)
