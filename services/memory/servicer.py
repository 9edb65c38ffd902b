"""MemoryService RPCs over the history store; proto <-> domain mapping lives here."""

from __future__ import annotations

import grpc

from llmmesh.common.v1 import chat_pb2
from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.errors import MeshError
from services.memory.store import HistoryStore, StoredMessage


def _require_session(tenant: str, session_id: str) -> None:
    if not tenant or not session_id:
        raise MeshError(grpc.StatusCode.INVALID_ARGUMENT, "tenant and session_id are required", "invalid_request_error")


def to_stored(message: chat_pb2.ChatMessage) -> StoredMessage:
    return StoredMessage(
        role=message.role,
        content=message.content,
        name=message.name,
        tool_call_id=message.tool_call_id,
        tool_calls_json=message.tool_calls_json,
    )


def to_proto(message: StoredMessage) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(
        role=message.role,
        content=message.content,
        name=message.name,
        tool_call_id=message.tool_call_id,
        tool_calls_json=message.tool_calls_json,
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, store: HistoryStore) -> None:
        self._store = store

    async def GetContext(
        self, request: memory_pb2.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetContextResponse:
        _require_session(request.tenant, request.session_id)
        history = await self._store.history(request.tenant, request.session_id)
        return memory_pb2.GetContextResponse(messages=[to_proto(m) for m in history])

    async def Append(
        self, request: memory_pb2.AppendRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.AppendResponse:
        _require_session(request.tenant, request.session_id)
        if not request.turn_id:
            raise MeshError(grpc.StatusCode.INVALID_ARGUMENT, "turn_id is required", "invalid_request_error")
        appended, stored = await self._store.append(
            request.tenant, request.session_id, request.turn_id, [to_stored(m) for m in request.messages]
        )
        return memory_pb2.AppendResponse(appended=appended, stored_messages=stored)

    async def DeleteSession(
        self, request: memory_pb2.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteSessionResponse:
        _require_session(request.tenant, request.session_id)
        return memory_pb2.DeleteSessionResponse(deleted=await self._store.delete(request.tenant, request.session_id))
