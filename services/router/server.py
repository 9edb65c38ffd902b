"""Router service bootstrap. An invalid config stops the start with the reasons; SIGHUP
re-reads it (as the ReloadConfig RPC does)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from llmmesh.inference.v1 import inference_pb2_grpc
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.common.channels import insecure_channel
from services.common.server import ServiceSpec, serve
from services.router.catalog import Catalog
from services.router.config import ConfigError
from services.router.embeddings import RoutingEmbeddings
from services.router.live import LivePolicy
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def build(settings: RouterSettings, stub: inference_pb2_grpc.InferenceServiceStub) -> tuple[LivePolicy, Catalog]:
    """The live policy over the config file and the inference service; ConfigError if the
    config is invalid."""
    catalog = Catalog(stub)
    embeddings = RoutingEmbeddings(stub, settings.embed_timeout_s, settings.embed_pause_s)
    return LivePolicy.load(settings.config_path, catalog, embeddings, settings.examples_timeout_s), catalog


async def main() -> None:
    settings = RouterSettings()
    channel = insecure_channel(settings.inference_target)
    try:
        live, catalog = build(settings, inference_pb2_grpc.InferenceServiceStub(channel))
    except ConfigError as exc:
        await channel.close()
        raise SystemExit(f"router: {exc}") from None
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        tasks.append(asyncio.create_task(catalog.keep_fresh(settings.catalog_refresh_s)))
        tasks.append(asyncio.create_task(live.keep_examples_embedded(settings.examples_retry_s)))
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, live.reload_in_background)

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await channel.close()

    spec = ServiceSpec(
        name="router",
        grpc_services=[SERVICE_NAME],
        register=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(live), server),
    )
    await serve(spec, settings, startup=startup, shutdown=shutdown)
