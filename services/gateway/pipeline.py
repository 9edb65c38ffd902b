"""The chat pipeline every front end (REST, gRPC) runs:

    (memory.GetContext || router.Route) -> inference.Generate (bidi stream) -> memory.Append

It yields domain events; the front ends only translate them to their wire formats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.common.channels import insecure_channel
from services.common.errors import MeshError, from_rpc_error
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


@dataclass
class ChatTurn:
    """One chat request, already validated and in proto types."""

    request_id: str
    tenant: str
    model: str
    messages: list[common_pb2.ChatMessage]
    sampling: common_pb2.SamplingParams
    session_id: str = ""
    tools_json: str = ""


@dataclass
class Accepted:
    """Sent first, once the engine took the request: what the pipeline decided."""

    agent: str
    backend_model: str
    prompt_tokens: int


@dataclass
class Delta:
    index: int
    text: str


@dataclass
class ChoiceDone:
    index: int
    finish_reason: str


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: dict[int, str] = field(default_factory=dict)


Event = Accepted | Delta | ChoiceDone | Done


def _merge_sampling(
    request: common_pb2.SamplingParams, defaults: common_pb2.SamplingParams
) -> common_pb2.SamplingParams:
    """The client's values win; the agent's defaults fill what the client left unset."""
    merged = common_pb2.SamplingParams()
    merged.CopyFrom(defaults)
    if request.stop:
        del merged.stop[:]  # MergeFrom would append the client's stops to the agent's
    merged.MergeFrom(request)
    return merged


def assemble_prompt(
    system_prompt: str, history: list[common_pb2.ChatMessage], new: list[common_pb2.ChatMessage]
) -> list[common_pb2.ChatMessage]:
    """System first (the client's own, else the agent's persona), then history, then the new turn."""
    client_system = [m for m in new if m.role in ("system", "developer")]
    rest = [m for m in new if m.role not in ("system", "developer")]
    if client_system:
        system = client_system
    elif system_prompt:
        system = [common_pb2.ChatMessage(role="system", content=system_prompt)]
    else:
        system = []
    return [*system, *history, *rest]


class ChatPipeline:
    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._channels = [
            insecure_channel(settings.memory_target),
            insecure_channel(settings.router_target),
            insecure_channel(settings.inference_target),
        ]
        self.memory = memory_pb2_grpc.MemoryServiceStub(self._channels[0])
        self.router = router_pb2_grpc.RouterServiceStub(self._channels[1])
        self.inference = inference_pb2_grpc.InferenceServiceStub(self._channels[2])

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    async def list_models(self) -> list[router_pb2.Model]:
        try:
            reply = await self.router.ListModels(
                router_pb2.ListModelsRequest(), timeout=self._settings.upstream_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return list(reply.models)

    async def _history(self, turn: ChatTurn) -> list[common_pb2.ChatMessage]:
        if not turn.session_id:
            return []
        reply = await self.memory.GetContext(
            memory_pb2.GetContextRequest(tenant=turn.tenant, session_id=turn.session_id),
            timeout=self._settings.upstream_timeout_s,
        )
        return list(reply.messages)

    async def _route(self, turn: ChatTurn) -> router_pb2.RouteResponse:
        reply: router_pb2.RouteResponse = await self.router.Route(
            router_pb2.RouteRequest(model=turn.model, messages=turn.messages, tenant=turn.tenant),
            timeout=self._settings.upstream_timeout_s,
        )
        return reply

    async def run(self, turn: ChatTurn) -> AsyncIterator[Event]:
        """Runs one turn. A bad request raises MeshError before the first event (Accepted);
        cancelling the consumer cancels the engine request."""
        try:
            history, route = await asyncio.gather(self._history(turn), self._route(turn))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

        start = inference_pb2.StartGeneration(
            request_id=turn.request_id,
            model=route.backend_model,
            messages=assemble_prompt(route.agent.system_prompt, history, turn.messages),
            sampling=_merge_sampling(turn.sampling, route.agent.sampling_defaults),
            tools_json=turn.tools_json,
        )
        texts: dict[int, list[str]] = {}
        finish: dict[int, str] = {}
        call = self.inference.Generate()
        try:
            await call.write(inference_pb2.GenerateRequest(start=start))
            async for reply in call:
                kind = reply.WhichOneof("event")
                if kind == "started":
                    yield Accepted(route.agent.name, route.backend_model, reply.started.prompt_tokens)
                elif kind == "delta":
                    texts.setdefault(reply.delta.index, []).append(reply.delta.text)
                    yield Delta(reply.delta.index, reply.delta.text)
                elif kind == "choice_end":
                    finish[reply.choice_end.index] = reply.choice_end.finish_reason
                    yield ChoiceDone(reply.choice_end.index, reply.choice_end.finish_reason)
                elif kind == "end":
                    usage = reply.end.usage
                    await self._remember(turn, "".join(texts.get(0, [])), finish.get(0, ""))
                    yield Done(usage.prompt_tokens, usage.completion_tokens, finish)
                    return
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # no-op when finished; aborts the engine request otherwise
        raise MeshError(grpc.StatusCode.INTERNAL, "inference stream ended without a result")

    async def _remember(self, turn: ChatTurn, reply: str, finish_reason: str) -> None:
        if not turn.session_id or finish_reason == "abort":
            return
        new = [m for m in turn.messages if m.role not in ("system", "developer")]
        new.append(common_pb2.ChatMessage(role="assistant", content=reply))
        await self.memory.Append(
            memory_pb2.AppendRequest(
                tenant=turn.tenant, session_id=turn.session_id, turn_id=turn.request_id, messages=new
            ),
            timeout=self._settings.upstream_timeout_s,
        )
