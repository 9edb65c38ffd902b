"""Router service bootstrap."""

from __future__ import annotations

from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.common.server import ServiceSpec, serve
from services.router.policy import RoutingPolicy
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


async def main() -> None:
    settings = RouterSettings()
    servicer = RouterServicer(RoutingPolicy.from_file(settings.config_path))
    spec = ServiceSpec(
        name="router",
        grpc_services=[SERVICE_NAME],
        register=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server),
    )
    await serve(spec, settings)
