"""The inference service's gRPC server in the test's process, over a backend the test built,
and a client that collects one Generate stream (as the gateway reads it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.channels import insecure_channel
from services.common.server import ServiceSpec, running_server
from services.common.settings import ServiceSettings
from services.inference.domain import Backend
from services.inference.servicer import InferenceServicer
from tests.unit.helpers import free_port


@contextlib.asynccontextmanager
async def serve_inference(
    backend: Backend, stream_interval_s: float = 0.0
) -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    port = free_port()
    servicer = InferenceServicer(backend, stream_interval_s=stream_interval_s)
    spec = ServiceSpec(
        "inference",
        ["llmmesh.inference.v1.InferenceService"],
        lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
    )
    settings = ServiceSettings(host="127.0.0.1", grpc_port=port, shutdown_grace_s=0.5)
    async with running_server(spec, settings):
        channel = insecure_channel(f"127.0.0.1:{port}")
        try:
            yield inference_pb2_grpc.InferenceServiceStub(channel)
        finally:
            await channel.close()


@dataclass
class Answer:
    started: inference_pb2.GenerationStarted
    text: str = ""
    finish_reason: str = ""
    usage: inference_pb2.GenerationEnd | None = None
    deltas: list[inference_pb2.TextDelta] = field(default_factory=list)


async def generate(stub: inference_pb2_grpc.InferenceServiceStub, start: inference_pb2.StartGeneration) -> Answer:
    """Choice 0 of one generation, assembled; a failed call raises grpc.aio.AioRpcError."""
    call = stub.Generate()
    await call.write(inference_pb2.GenerateRequest(start=start))
    answer: Answer | None = None
    async for reply in call:
        kind = reply.WhichOneof("event")
        if kind == "started":
            answer = Answer(reply.started)
        elif answer is None:
            raise AssertionError(f"{kind} before started")
        elif kind == "delta" and reply.delta.index == 0:
            answer.deltas.append(reply.delta)
            answer.text += reply.delta.text
        elif kind == "choice_end" and reply.choice_end.index == 0:
            answer.finish_reason = reply.choice_end.finish_reason
        elif kind == "end":
            answer.usage = reply.end
    assert answer is not None, "no started event"
    return answer
