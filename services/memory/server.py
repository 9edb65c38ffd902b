"""Memory service bootstrap."""

from __future__ import annotations

from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.server import ServiceSpec, serve
from services.memory.servicer import MemoryServicer
from services.memory.settings import MemorySettings
from services.memory.store import HistoryStore

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


async def main() -> None:
    settings = MemorySettings()
    store = HistoryStore.from_url(settings.redis_url, settings.history_ttl_s)
    servicer = MemoryServicer(store)

    async def startup() -> None:
        await store.ping()  # fail fast when Redis is not there

    spec = ServiceSpec(
        name="memory",
        grpc_services=[SERVICE_NAME],
        register=lambda server: memory_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server),
    )
    await serve(spec, settings, startup=startup, shutdown=store.close)
