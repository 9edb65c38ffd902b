"""RouterService RPCs over the routing policy; proto <-> domain mapping lives here."""

from __future__ import annotations

from typing import Any

import grpc

from llmmesh.common.v1 import chat_pb2
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.common.errors import MeshError
from services.router.catalog import Catalog
from services.router.policy import RoutingPolicy, UnknownModelError


def _sampling(defaults: dict[str, Any]) -> chat_pb2.SamplingParams:
    known = {f.name for f in chat_pb2.SamplingParams.DESCRIPTOR.fields}
    unknown = set(defaults) - known
    if unknown:
        raise ValueError(f"unknown sampling defaults: {sorted(unknown)}")
    return chat_pb2.SamplingParams(**defaults)


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, policy: RoutingPolicy, catalog: Catalog) -> None:
        self._policy = policy
        self._catalog = catalog

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        try:
            try:
                decision = self._policy.route(request.model, last_user, self._catalog.models)
            except UnknownModelError:
                await self._catalog.refresh_if_older(1.0)  # a model that just came up
                decision = self._policy.route(request.model, last_user, self._catalog.models)
        except UnknownModelError:
            raise MeshError(
                grpc.StatusCode.NOT_FOUND, f"The model `{request.model}` does not exist.", "model_not_found"
            ) from None
        agent = decision.agent
        return router_pb2.RouteResponse(
            backend_model=decision.model.backend_model,
            agent=router_pb2.Agent(
                name=agent.name, system_prompt=agent.system_prompt, sampling_defaults=_sampling(agent.sampling)
            ),
            reason=decision.reason,
        )

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        return router_pb2.ListModelsResponse(
            models=[
                router_pb2.Model(id=m.id, owned_by=m.owned_by, backend_model=m.backend_model)
                for m in self._catalog.models.values()
            ]
        )
