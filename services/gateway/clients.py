"""The gateway's channels and stubs to the internal services, made once and handed to
whatever needs them (the chat pipeline, the session and memory endpoints).

Chat turns pick their inference replica through `placement` (placement.py); `inference` is
the first replica, for the calls that need no choice (embeddings, token counts)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from llmmesh.inference.v1 import inference_pb2_grpc
from llmmesh.memory.v1 import memory_pb2_grpc
from llmmesh.router.v1 import router_pb2_grpc
from services.common.channels import insecure_channel
from services.common.placement import Overload
from services.gateway.placement import ReplicaPlacement
from services.gateway.settings import GatewaySettings


@dataclass
class MeshClients:
    memory: memory_pb2_grpc.MemoryServiceStub
    router: router_pb2_grpc.RouterServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    placement: ReplicaPlacement
    channels: list[grpc.aio.Channel]

    @classmethod
    def connect(cls, settings: GatewaySettings) -> MeshClients:
        memory, router = (insecure_channel(target) for target in (settings.memory_target, settings.router_target))
        replicas = {target: insecure_channel(target) for target in settings.inference_replicas}
        stubs = {target: inference_pb2_grpc.InferenceServiceStub(channel) for target, channel in replicas.items()}
        placement = ReplicaPlacement(
            stubs,
            Overload(settings.placement_running_share, settings.placement_kv_cache_usage),
            settings.placement_affinity_sessions,
            settings.placement_poll_s,
        )
        return cls(
            memory=memory_pb2_grpc.MemoryServiceStub(memory),
            router=router_pb2_grpc.RouterServiceStub(router),
            inference=next(iter(stubs.values())),
            placement=placement,
            channels=[memory, router, *replicas.values()],
        )

    async def close(self) -> None:
        await self.placement.stop()
        await asyncio.gather(*(c.close() for c in self.channels))
