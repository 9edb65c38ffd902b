"""Gateway bootstrap: the OpenAI REST API (uvicorn) and the gRPC ChatService on one event loop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from services.common.keys import KeyStore, connect
from services.common.server import ServiceSpec, Sidecar, serve
from services.gateway.auth import Authenticator
from services.gateway.clients import MeshClients
from services.gateway.http_api import create_app
from services.gateway.limits import Limiter
from services.gateway.pipeline import ChatPipeline
from services.gateway.servicer import ChatServicer
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service bootstrap owns SIGTERM/SIGINT
    and asks this server to drain through `should_exit`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main() -> None:
    settings = GatewaySettings()
    clients = MeshClients.connect(settings)
    pipeline = ChatPipeline(settings, clients)
    shared = connect(settings.redis_url)  # keys, limits and usage: one pool
    keys = KeyStore(shared)
    auth = Authenticator(settings, keys)
    limiter = Limiter(settings, shared)
    http = HttpServer(
        uvicorn.Config(
            create_app(settings, pipeline, clients, auth, limiter),
            host=settings.host,
            port=settings.http_port,
            loop="none",  # the service's loop is already running
            http="httptools",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        )
    )

    def stop_http() -> None:
        http.should_exit = True

    spec = ServiceSpec(
        name="gateway",
        grpc_services=[SERVICE_NAME],
        register=lambda server: chat_pb2_grpc.add_ChatServiceServicer_to_server(
            ChatServicer(settings, pipeline, auth, limiter), server
        ),
        sidecars=[Sidecar(run=http.serve, stop=stop_http)],
    )

    async def startup() -> None:
        await auth.seed()  # fails fast when Redis is not there
        clients.placement.start()  # polls the inference replicas' load

    async def shutdown() -> None:
        await pipeline.close()
        if not await limiter.usage.written(settings.shutdown_grace_s):
            log.warning("usage records not written at shutdown", extra={"records": limiter.usage.pending})
        await keys.close()

    await serve(spec, settings, startup=startup, shutdown=shutdown)
