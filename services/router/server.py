"""Router service bootstrap."""

from __future__ import annotations

import asyncio
import contextlib

from llmmesh.inference.v1 import inference_pb2_grpc
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.common.channels import insecure_channel
from services.common.server import ServiceSpec, serve
from services.router.catalog import Catalog
from services.router.policy import RoutingPolicy
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


async def main() -> None:
    settings = RouterSettings()
    policy = RoutingPolicy.from_file(settings.config_path)
    channel = insecure_channel(settings.inference_target)
    catalog = Catalog(inference_pb2_grpc.InferenceServiceStub(channel), policy.models)
    servicer = RouterServicer(policy, catalog)
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        tasks.append(asyncio.create_task(catalog.keep_fresh(settings.catalog_refresh_s)))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await channel.close()

    spec = ServiceSpec(
        name="router",
        grpc_services=[SERVICE_NAME],
        register=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server),
    )
    await serve(spec, settings, startup=startup, shutdown=shutdown)
