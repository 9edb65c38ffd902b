"""Sessions and long-term memories over REST, scoped to the caller's tenant:

    POST/GET /v1/sessions, GET/PATCH/DELETE /v1/sessions/{id}
    POST /v1/memories/search, GET /v1/memories, DELETE /v1/memories/{id}

OpenAI-style objects and lists; another tenant's ids are 404, like ids that never existed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from llmmesh.memory.v1 import memory_pb2
from services.common.context import call_metadata
from services.common.errors import MeshError
from services.common.messages import to_openai
from services.gateway.clients import MeshClients
from services.gateway.protocol import SESSION_ID_PATTERN
from services.gateway.settings import GatewaySettings

T = TypeVar("T")


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, min_length=1, pattern=SESSION_ID_PATTERN)
    system_prompt: str | None = Field(default=None, max_length=100_000)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = Field(default=None, max_length=256)


class UpdateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system_prompt: str | None = Field(default=None, max_length=100_000)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class SearchMemories(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=10_000)
    user: str | None = Field(default=None, max_length=256)
    session_id: str | None = Field(default=None, max_length=256)
    top_k: int = Field(default=5, ge=1, le=50)


def session_object(session: memory_pb2.Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "object": "session",
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "system_prompt": session.system_prompt or None,
        "metadata": dict(session.metadata),
        "turns": session.turns,
        "user": session.user or None,
    }


def memory_object(memory: memory_pb2.Memory, scored: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": memory.id,
        "object": "memory",
        "text": memory.text,
        "role": memory.role,
        "session_id": memory.session_id,
        # The position of its turn in the session (1, 2, ...): where it was said.
        "seq": memory.seq,
        "user": memory.user or None,
        "created_at": memory.created_at,
    }
    if scored:
        out["score"] = round(memory.score, 6)
    return out


def list_object(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def create_router(settings: GatewaySettings, clients: MeshClients, tenant: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(tags=["sessions and memories"])
    memory = clients.memory
    timeout = settings.upstream_timeout_s

    async def call(rpc: Callable[..., Awaitable[T]], request: Any) -> T:
        # A failed call is mapped by the app's handler.
        return await rpc(request, timeout=timeout, metadata=call_metadata())

    @router.post("/v1/sessions")
    async def create_session(body: CreateSession, tenant_: str = Depends(tenant)) -> dict[str, Any]:
        reply = await call(
            memory.CreateSession,
            memory_pb2.CreateSessionRequest(
                tenant=tenant_,
                session_id=body.id or "",
                system_prompt=body.system_prompt or "",
                metadata=body.metadata or {},
                user=body.user or "",
            ),
        )
        return session_object(reply.session)

    @router.get("/v1/sessions")
    async def list_sessions(
        limit: int = Query(default=20, ge=1, le=100),
        after: str | None = Query(default=None, max_length=256),
        tenant_: str = Depends(tenant),
    ) -> dict[str, Any]:
        reply = await call(
            memory.ListSessions, memory_pb2.ListSessionsRequest(tenant=tenant_, limit=limit, after=after or "")
        )
        return list_object([session_object(s) for s in reply.sessions], reply.has_more)

    @router.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, tenant_: str = Depends(tenant)) -> dict[str, Any]:
        reply = await call(
            memory.GetSession, memory_pb2.GetSessionRequest(tenant=tenant_, session_id=session_id, with_turns=True)
        )
        out = session_object(reply.session)
        out["messages"] = [to_openai(m) for turn in reply.turns for m in turn.messages if m.role]
        return out

    @router.patch("/v1/sessions/{session_id}")
    async def update_session(session_id: str, body: UpdateSession, tenant_: str = Depends(tenant)) -> dict[str, Any]:
        request = memory_pb2.UpdateSessionRequest(tenant=tenant_, session_id=session_id)
        if body.system_prompt is not None:
            request.system_prompt = body.system_prompt
        if body.metadata is not None:
            request.replace_metadata = True
            request.metadata.update(body.metadata)
        reply = await call(memory.UpdateSession, request)
        return session_object(reply.session)

    @router.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, tenant_: str = Depends(tenant)) -> dict[str, Any]:
        reply = await call(memory.DeleteSession, memory_pb2.DeleteSessionRequest(tenant=tenant_, session_id=session_id))
        if not reply.deleted:
            raise MeshError(grpc.StatusCode.NOT_FOUND, f"No session found with id '{session_id}'.", "session_not_found")
        return {"id": session_id, "object": "session.deleted", "deleted": True}

    @router.post("/v1/memories/search")
    async def search_memories(body: SearchMemories, tenant_: str = Depends(tenant)) -> dict[str, Any]:
        reply = await call(
            memory.SearchMemories,
            memory_pb2.SearchMemoriesRequest(
                tenant=tenant_,
                query=body.query,
                user=body.user or "",
                session_id=body.session_id or "",
                top_k=body.top_k,
            ),
        )
        return list_object([memory_object(m, scored=True) for m in reply.memories])

    @router.get("/v1/memories")
    async def list_memories(
        user: str | None = Query(default=None, max_length=256),
        session_id: str | None = Query(default=None, max_length=256),
        limit: int = Query(default=20, ge=1, le=100),
        after: str | None = Query(default=None, max_length=64),
        tenant_: str = Depends(tenant),
    ) -> dict[str, Any]:
        reply = await call(
            memory.ListMemories,
            memory_pb2.ListMemoriesRequest(
                tenant=tenant_, user=user or "", session_id=session_id or "", limit=limit, after=after or ""
            ),
        )
        return list_object([memory_object(m) for m in reply.memories], reply.has_more)

    @router.delete("/v1/memories/{memory_id}")
    async def delete_memory(memory_id: str, tenant_: str = Depends(tenant)) -> dict[str, Any]:
        await call(memory.DeleteMemory, memory_pb2.DeleteMemoryRequest(tenant=tenant_, memory_id=memory_id))
        return {"id": memory_id, "object": "memory.deleted", "deleted": True}

    return router
