"""The router service on a real gRPC server, beside a stand-in inference service: the real
all-MiniLM-L6-v2 behind its Embed RPC, and a ListModels of the test's choosing (so chains with
external backends can be shown without any upstream). Embed can be made to fail."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmmesh.router.v1 import router_pb2_grpc
from services.common.channels import insecure_channel
from services.common.server import ServiceSpec, running_server
from services.common.settings import ServiceSettings
from services.inference.embedder import Embedder
from services.router.live import LivePolicy
from services.router.server import build
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from tests.unit.helpers import free_port

LOCAL_MODEL = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "deploy" / "router.yaml"
INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class StandInInference:
    """Embed with the real model; ListModels answers `served`; no other RPC."""

    def __init__(self, embedder: Embedder, served: list[str]) -> None:
        self.embedder = embedder
        self.served = served
        self.embed_down = False
        self.embed_calls = 0

    async def Embed(
        self, request: inference_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.EmbedResponse:
        self.embed_calls += 1
        if self.embed_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "embedding model down (test)")
        vectors, tokens = await self.embedder.aembed(list(request.texts))
        return inference_pb2.EmbedResponse(
            embeddings=[inference_pb2.Embedding(values=v) for v in vectors],
            model=self.embedder.name,
            dimensions=self.embedder.dimensions,
            prompt_tokens=tokens,
        )

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(models=[inference_pb2.ModelInfo(id=m) for m in self.served])

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            INFERENCE,
            {
                "Embed": grpc.unary_unary_rpc_method_handler(
                    self.Embed,
                    request_deserializer=inference_pb2.EmbedRequest.FromString,
                    response_serializer=inference_pb2.EmbedResponse.SerializeToString,
                ),
                "ListModels": grpc.unary_unary_rpc_method_handler(
                    self.ListModels,
                    request_deserializer=inference_pb2.ListModelsRequest.FromString,
                    response_serializer=inference_pb2.ListModelsResponse.SerializeToString,
                ),
            },
        )


@dataclass
class RouterMesh:
    router: router_pb2_grpc.RouterServiceStub
    inference: StandInInference
    live: LivePolicy
    config_path: Path
    inference_target: str


def _settings(port: int) -> ServiceSettings:
    return ServiceSettings(host="127.0.0.1", grpc_port=port, shutdown_grace_s=0.5)


@contextlib.asynccontextmanager
async def router_mesh(
    embedder: Embedder,
    config_path: Path = SHIPPED_CONFIG,
    served: list[str] | None = None,
    embed_pause_s: float = 5.0,
    embed_down: bool = False,
) -> AsyncIterator[RouterMesh]:
    """Starts both servers; the catalog is refreshed and the examples embedded before it yields."""
    stand_in = StandInInference(embedder, served if served is not None else [LOCAL_MODEL])
    stand_in.embed_down = embed_down
    inference_port, router_port = free_port(), free_port()
    inference_target = f"127.0.0.1:{inference_port}"
    to_inference = insecure_channel(inference_target)
    live, catalog = build(
        RouterSettings(
            config_path=config_path,
            inference_target=inference_target,
            embed_timeout_s=5.0,  # a busy test machine must not turn a slow query into a fallback
            embed_pause_s=embed_pause_s,
        ),
        inference_pb2_grpc.InferenceServiceStub(to_inference),
    )
    inference_spec = ServiceSpec("inference", [INFERENCE], lambda s: s.add_generic_rpc_handlers((stand_in.handlers(),)))
    router_spec = ServiceSpec(
        "router",
        ["llmmesh.router.v1.RouterService"],
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(live), s),
    )
    async with (
        running_server(inference_spec, _settings(inference_port)),
        running_server(router_spec, _settings(router_port)),
    ):
        to_router = insecure_channel(f"127.0.0.1:{router_port}")
        try:
            await catalog.refresh()
            await live.embed_examples()
            yield RouterMesh(
                router_pb2_grpc.RouterServiceStub(to_router),
                stand_in,
                live,
                config_path,
                inference_target,
            )
        finally:
            await to_router.close()
            await to_inference.close()
