"""ChatService: the gateway's pipeline for internal gRPC clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from llmmesh.common.v1 import chat_pb2 as common_pb2
from services.common.context import current_request_id
from services.common.errors import InvalidArgumentError
from services.gateway.auth import Authenticator
from services.gateway.limits import Limiter
from services.gateway.pipeline import Accepted, ChatPipeline, ChatTurn, Delta, Done
from services.gateway.settings import GatewaySettings


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(
        self, settings: GatewaySettings, pipeline: ChatPipeline, auth: Authenticator, limiter: Limiter
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._auth = auth
        self._limiter = limiter

    async def StreamChat(
        self, request: chat_pb2.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        caller = await self._auth.caller(_authorization(context))
        if not request.messages:
            raise InvalidArgumentError("messages must not be empty", "messages")
        turn = ChatTurn(
            request_id=current_request_id(),
            tenant=caller.tenant,
            model=request.model,
            messages=list(request.messages),
            sampling=request.sampling,
            session_id=request.session_id,
        )
        # Per-key limits (limits.py): a refusal is the call's status (RESOURCE_EXHAUSTED, ...).
        async for event in self._limiter.limit(caller, turn, self._pipeline.run(turn)):
            if isinstance(event, Accepted):
                yield chat_pb2.StreamChatResponse(
                    started=chat_pb2.ChatStarted(
                        request_id=turn.request_id, model=request.model, session_id=turn.session_id, agent=event.agent
                    )
                )
            elif isinstance(event, Delta):
                yield chat_pb2.StreamChatResponse(delta=chat_pb2.ChatDelta(index=event.index, text=event.text))
            elif isinstance(event, Done):
                yield chat_pb2.StreamChatResponse(
                    finished=chat_pb2.ChatFinished(
                        finish_reasons=[event.finish_reasons[i] for i in sorted(event.finish_reasons)],
                        usage=common_pb2.Usage(
                            prompt_tokens=event.prompt_tokens,
                            completion_tokens=event.completion_tokens,
                            total_tokens=event.prompt_tokens + event.completion_tokens,
                            cached_tokens=event.cached_tokens,
                        ),
                    )
                )
