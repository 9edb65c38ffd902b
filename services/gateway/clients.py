"""The gateway's channels and stubs to the internal services, made once and handed to
whatever needs them (the chat pipeline, the session and memory endpoints)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from llmmesh.inference.v1 import inference_pb2_grpc
from llmmesh.memory.v1 import memory_pb2_grpc
from llmmesh.router.v1 import router_pb2_grpc
from services.common.channels import insecure_channel
from services.gateway.settings import GatewaySettings


@dataclass
class MeshClients:
    memory: memory_pb2_grpc.MemoryServiceStub
    router: router_pb2_grpc.RouterServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    channels: list[grpc.aio.Channel]

    @classmethod
    def connect(cls, settings: GatewaySettings) -> MeshClients:
        memory, router, inference = (
            insecure_channel(target)
            for target in (settings.memory_target, settings.router_target, settings.inference_target)
        )
        return cls(
            memory=memory_pb2_grpc.MemoryServiceStub(memory),
            router=router_pb2_grpc.RouterServiceStub(router),
            inference=inference_pb2_grpc.InferenceServiceStub(inference),
            channels=[memory, router, inference],
        )

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))
