"""OpenAI's Conversations API over llmmesh's sessions: a conversation IS a session (one id space:
a conversation id is a `session_id` for chat completions, and a session id is a conversation id).

    POST /v1/conversations, GET/POST/DELETE /v1/conversations/{id}
    GET/POST /v1/conversations/{id}/items, GET/DELETE /v1/conversations/{id}/items/{item_id}

Its items are the messages of the session's stored turns (ids in responses_protocol.py). Items
added without a response are one turn with no assistant reply. Deleting a conversation is
deleting the session: history, long-term memories and stored responses go.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from llmmesh.memory.v1 import memory_pb2
from services.gateway.auth import Caller
from services.gateway.clients import MeshClients
from services.gateway.errors import APIError
from services.gateway.pipeline import ChatPipeline
from services.gateway.responses import MemoryCalls, new_session_id, not_found, page
from services.gateway.responses_protocol import (
    MAX_METADATA,
    check_metadata,
    input_messages,
    message_items,
    parse_item_id,
)
from services.gateway.sessions import list_object
from services.gateway.settings import GatewaySettings

MAX_ITEMS = 20


class CreateConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_ITEMS)
    metadata: dict[str, str] | None = Field(default=None, max_length=MAX_METADATA)


class UpdateConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, str] = Field(max_length=MAX_METADATA)


class AddItems(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)


def conversation_object(session: memory_pb2.Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "object": "conversation",
        "created_at": session.created_at,
        "metadata": dict(session.metadata),
    }


def _no_include(request: Request) -> None:
    """`include` (sent as include[] by the SDK) is refused, not dropped."""
    if any(name == "include" or name.startswith("include[") for name in request.query_params):
        raise APIError.invalid("'include' is not supported for conversation items.", "include", "unsupported_parameter")


def create_router(
    settings: GatewaySettings,
    pipeline: ChatPipeline,
    clients: MeshClients,
    caller: Callable[..., Awaitable[Caller]],
) -> APIRouter:
    router = APIRouter(tags=["conversations"])
    memory = MemoryCalls(settings, clients, pipeline)

    async def session(tenant: str, conversation_id: str) -> memory_pb2.Session:
        try:
            reply = await memory(
                memory.stub.GetSession, memory_pb2.GetSessionRequest(tenant=tenant, session_id=conversation_id)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found("conversation", conversation_id) from None
            raise
        found: memory_pb2.Session = reply.session
        return found

    async def append(tenant: str, conversation_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items as one turn with no reply; the items as stored."""
        messages = input_messages(items, "items")
        turn_id = uuid.uuid4().hex
        await memory(
            memory.stub.Append,
            memory_pb2.AppendRequest(tenant=tenant, session_id=conversation_id, turn_id=turn_id, messages=messages),
        )
        return [item for i, m in enumerate(messages) for item in message_items(turn_id, i, m)]

    async def find_message(
        tenant: str, conversation_id: str, item_id: str
    ) -> tuple[memory_pb2.Turn, int, list[dict[str, Any]]]:
        """The turn, message index and that message's items for an item id (404 otherwise)."""
        turns = await memory.turns(tenant, conversation_id, "conversation", None)
        parsed = parse_item_id(item_id)
        for turn in turns:
            if parsed is not None and turn.turn_id == parsed[0] and parsed[1] < len(turn.messages):
                items = message_items(turn.turn_id, parsed[1], turn.messages[parsed[1]])
                if any(item["id"] == item_id for item in items):
                    return turn, parsed[1], items
        raise not_found("item", item_id)

    @router.post("/v1/conversations")
    async def create_conversation(body: CreateConversation, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        check_metadata(body.metadata)
        if body.items:
            input_messages(body.items, "items")  # a bad item is a 400 before anything is made
        reply = await memory(
            memory.stub.CreateSession,
            memory_pb2.CreateSessionRequest(
                tenant=caller_.tenant, session_id=new_session_id(), metadata=body.metadata or {}
            ),
        )
        if body.items:
            await append(caller_.tenant, reply.session.id, body.items)
        return conversation_object(reply.session)

    @router.get("/v1/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        return conversation_object(await session(caller_.tenant, conversation_id))

    @router.post("/v1/conversations/{conversation_id}")
    async def update_conversation(
        conversation_id: str, body: UpdateConversation, caller_: Caller = Depends(caller)
    ) -> dict[str, Any]:
        check_metadata(body.metadata)
        await session(caller_.tenant, conversation_id)
        request = memory_pb2.UpdateSessionRequest(
            tenant=caller_.tenant, session_id=conversation_id, replace_metadata=True, metadata=body.metadata
        )
        reply = await memory(memory.stub.UpdateSession, request)
        return conversation_object(reply.session)

    @router.delete("/v1/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: str, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        await pipeline.stored(caller_.tenant, conversation_id)
        reply = await memory(
            memory.stub.DeleteSession,
            memory_pb2.DeleteSessionRequest(tenant=caller_.tenant, session_id=conversation_id),
        )
        if not reply.deleted:
            raise not_found("conversation", conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @router.get("/v1/conversations/{conversation_id}/items")
    async def list_items(
        conversation_id: str,
        request: Request,
        after: str | None = Query(default=None, max_length=256),
        limit: int = Query(default=20, ge=1, le=100),
        order: str = Query(default="desc", pattern="^(asc|desc)$"),
        caller_: Caller = Depends(caller),
    ) -> dict[str, Any]:
        _no_include(request)
        turns = await memory.turns(caller_.tenant, conversation_id, "conversation", None)
        items = [item for t in turns for i, m in enumerate(t.messages) for item in message_items(t.turn_id, i, m)]
        return page(items, after, limit, order)

    @router.post("/v1/conversations/{conversation_id}/items")
    async def add_items(
        conversation_id: str,
        body: AddItems,
        request: Request,
        caller_: Caller = Depends(caller),
    ) -> dict[str, Any]:
        _no_include(request)
        await memory.turns(caller_.tenant, conversation_id, "conversation", None)  # exists; pending turns first
        return list_object(await append(caller_.tenant, conversation_id, body.items))

    @router.get("/v1/conversations/{conversation_id}/items/{item_id}")
    async def get_item(conversation_id: str, item_id: str, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        _, _, items = await find_message(caller_.tenant, conversation_id, item_id)
        return next(item for item in items if item["id"] == item_id)

    @router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
    async def delete_item(conversation_id: str, item_id: str, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        turn, index, items = await find_message(caller_.tenant, conversation_id, item_id)
        if len(items) > 1:
            others = ", ".join(item["id"] for item in items if item["id"] != item_id)
            raise APIError.invalid(
                f"Item '{item_id}' is stored in one message with {others}; it cannot be deleted alone.", "item_id"
            )
        await memory(
            memory.stub.ForgetTurn,
            memory_pb2.ForgetTurnRequest(
                tenant=caller_.tenant, session_id=conversation_id, turn_id=turn.turn_id, message_index=index
            ),
        )
        return conversation_object(await session(caller_.tenant, conversation_id))

    return router
