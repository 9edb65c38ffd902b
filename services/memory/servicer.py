"""MemoryService RPCs over the memory core; proto <-> domain mapping lives here."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from llmmesh.common.v1 import chat_pb2
from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.errors import InvalidArgumentError, MeshError
from services.memory.core import MemoryCore, not_found
from services.memory.knowledge import Knowledge
from services.memory.store import SessionDeletedError, SessionInfo, StoredMessage, StoredTurn
from services.memory.vectors import DocumentInfo, MemoryRecord, ScoredPassage, ScoredRecord

MAX_ID = 256


def _require(tenant: str, session_id: str = "-") -> None:
    if not tenant or not session_id:
        raise InvalidArgumentError("tenant and session_id are required")
    if len(session_id) > MAX_ID:
        raise InvalidArgumentError(f"session_id is longer than {MAX_ID} characters", "session_id")


def _page(limit: int, default: int, most: int) -> int:
    if limit < 0 or limit > most:
        raise InvalidArgumentError(f"limit must be between 1 and {most}", "limit")
    return limit or default


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


def session_proto(session: SessionInfo) -> memory_pb2.Session:
    return memory_pb2.Session(
        id=session.id,
        created_at=session.created_at,
        updated_at=session.updated_at,
        system_prompt=session.system_prompt,
        metadata=session.metadata,
        turns=session.turns,
        user=session.user,
    )


def turn_proto(turn: StoredTurn) -> memory_pb2.Turn:
    return memory_pb2.Turn(turn_id=turn.turn_id, seq=turn.seq, messages=[to_proto(m) for m in turn.messages])


def memory_proto(record: MemoryRecord, score: float = 0.0) -> memory_pb2.Memory:
    return memory_pb2.Memory(
        id=record.id,
        text=record.text,
        role=record.role,
        session_id=record.session_id,
        user=record.user,
        seq=record.seq,
        created_at=record.created_at,
        score=score,
    )


def scored_proto(found: ScoredRecord) -> memory_pb2.Memory:
    return memory_proto(found.record, found.score)


def collections_proto(documents: list[DocumentInfo]) -> list[memory_pb2.KnowledgeCollection]:
    """Documents (by collection, then name) grouped into their collections."""
    collections: dict[str, memory_pb2.KnowledgeCollection] = {}
    for d in documents:
        collection = collections.setdefault(d.collection, memory_pb2.KnowledgeCollection(name=d.collection))
        collection.documents.append(
            memory_pb2.KnowledgeDocumentInfo(name=d.document, chunks=d.chunks, tokens=d.tokens, added_at=d.added_at)
        )
        collection.chunks += d.chunks
    return list(collections.values())


def passage_proto(found: ScoredPassage) -> memory_pb2.KnowledgePassage:
    p = found.passage
    return memory_pb2.KnowledgePassage(
        document=p.document, chunk=p.chunk, text=p.text, score=found.score, tokens=p.tokens
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, core: MemoryCore, knowledge: Knowledge | None = None) -> None:
        self._core = core
        self._knowledge = knowledge or Knowledge(core.vectors, core.embeddings)

    async def GetContext(
        self, request: memory_pb2.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetContextResponse:
        _require(request.tenant, request.session_id)
        found = await self._core.context(request.tenant, request.session_id, request.user, request.query)
        return memory_pb2.GetContextResponse(
            session=session_proto(found.session) if found.session else None,
            window=[turn_proto(t) for t in found.window],
            recalled=[scored_proto(r) for r in found.recalled],
            recall_skipped=found.recall_skipped,
        )

    async def Append(
        self, request: memory_pb2.AppendRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.AppendResponse:
        _require(request.tenant, request.session_id)
        if not request.turn_id:
            raise InvalidArgumentError("turn_id is required")
        try:
            appended, stored, seq = await self._core.append(
                request.tenant,
                request.session_id,
                request.turn_id,
                [to_stored(m) for m in request.messages],
                user=request.user,
                started_at_ms=request.started_at_ms,
                window_start=request.window_start,
            )
        except SessionDeletedError:
            raise MeshError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Session '{request.session_id}' was deleted after this turn started.",
                "session_deleted",
            ) from None
        return memory_pb2.AppendResponse(appended=appended, stored_turns=stored, seq=seq)

    async def CreateSession(
        self, request: memory_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.CreateSessionResponse:
        _require(request.tenant)
        if len(request.session_id) > MAX_ID:
            raise InvalidArgumentError(f"session_id is longer than {MAX_ID} characters", "session_id")
        session = await self._core.create_session(
            request.tenant, request.session_id, request.system_prompt, dict(request.metadata), request.user
        )
        return memory_pb2.CreateSessionResponse(session=session_proto(session))

    async def GetSession(
        self, request: memory_pb2.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetSessionResponse:
        _require(request.tenant, request.session_id)
        if not request.with_turns:
            return memory_pb2.GetSessionResponse(
                session=session_proto(await self._core.get_session(request.tenant, request.session_id))
            )
        session, turns = await self._core.session_turns(request.tenant, request.session_id)
        return memory_pb2.GetSessionResponse(session=session_proto(session), turns=[turn_proto(t) for t in turns])

    async def ListSessions(
        self, request: memory_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListSessionsResponse:
        _require(request.tenant)
        sessions, more = await self._core.store.list_sessions(
            request.tenant, _page(request.limit, 20, 100), request.after
        )
        return memory_pb2.ListSessionsResponse(sessions=[session_proto(s) for s in sessions], has_more=more)

    async def UpdateSession(
        self, request: memory_pb2.UpdateSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.UpdateSessionResponse:
        _require(request.tenant, request.session_id)
        session = await self._core.update_session(
            request.tenant,
            request.session_id,
            request.system_prompt if request.HasField("system_prompt") else None,
            dict(request.metadata) if request.replace_metadata else None,
        )
        return memory_pb2.UpdateSessionResponse(session=session_proto(session))

    async def DeleteSession(
        self, request: memory_pb2.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteSessionResponse:
        _require(request.tenant, request.session_id)
        deleted = await self._core.delete_session(request.tenant, request.session_id)
        return memory_pb2.DeleteSessionResponse(deleted=deleted)

    async def SearchMemories(
        self, request: memory_pb2.SearchMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.SearchMemoriesResponse:
        _require(request.tenant)
        if not request.query.strip():
            raise InvalidArgumentError("query must not be empty", "query")
        if request.top_k < 0 or request.top_k > 50:
            raise InvalidArgumentError("top_k must be between 1 and 50", "top_k")
        found = await self._core.search(
            request.tenant, request.query, request.user, request.session_id, request.top_k or 5
        )
        return memory_pb2.SearchMemoriesResponse(memories=[scored_proto(r) for r in found])

    async def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListMemoriesResponse:
        _require(request.tenant)
        if not request.user and not request.session_id:
            raise InvalidArgumentError("user or session_id is required")
        records, more = await self._core.list(
            request.tenant, request.user, request.session_id, _page(request.limit, 20, 100), request.after
        )
        return memory_pb2.ListMemoriesResponse(memories=[memory_proto(r) for r in records], has_more=more)

    async def DeleteMemory(
        self, request: memory_pb2.DeleteMemoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteMemoryResponse:
        _require(request.tenant)
        if not request.memory_id:
            raise InvalidArgumentError("memory_id is required")
        return memory_pb2.DeleteMemoryResponse(
            deleted=await self._core.delete_memory(request.tenant, request.memory_id)
        )

    # --- knowledge ----------------------------------------------------------------------

    async def AddKnowledge(
        self, request: memory_pb2.AddKnowledgeRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.AddKnowledgeResponse:
        _require(request.tenant)
        added = await self._knowledge.add(
            request.tenant, request.collection, [(d.name, d.text) for d in request.documents]
        )
        return memory_pb2.AddKnowledgeResponse(
            documents=[
                memory_pb2.AddedDocument(name=a.name, chunks=a.chunks, tokens=a.tokens, removed_chunks=a.removed_chunks)
                for a in added
            ]
        )

    async def ListKnowledge(
        self, request: memory_pb2.ListKnowledgeRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListKnowledgeResponse:
        _require(request.tenant)
        documents = await self._knowledge.documents(request.tenant, request.collection)
        return memory_pb2.ListKnowledgeResponse(collections=collections_proto(documents))

    async def DeleteKnowledge(
        self, request: memory_pb2.DeleteKnowledgeRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteKnowledgeResponse:
        _require(request.tenant)
        removed = await self._knowledge.delete(request.tenant, request.collection, request.document)
        return memory_pb2.DeleteKnowledgeResponse(removed_chunks=removed)

    async def SearchKnowledge(
        self, request: memory_pb2.SearchKnowledgeRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.SearchKnowledgeResponse:
        _require(request.tenant)
        found = await self._knowledge.search(
            request.tenant,
            request.collection,
            request.query,
            top_k=request.top_k,
            max_tokens=request.max_tokens,
            min_score=request.min_score,
        )
        return memory_pb2.SearchKnowledgeResponse(
            passages=[passage_proto(f) for f in found], tokens=sum(f.passage.tokens for f in found)
        )

    # --- stored responses ---------------------------------------------------------------

    async def PutResponse(
        self, request: memory_pb2.PutResponseRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.PutResponseResponse:
        response = request.response
        _require(request.tenant, response.session_id)
        if not response.id or len(response.id) > MAX_ID:
            raise InvalidArgumentError("response.id is required (at most 256 characters)", "response.id")
        await self._core.store.put_response(
            request.tenant, response.session_id, response.id, json_format.MessageToJson(response)
        )
        return memory_pb2.PutResponseResponse()

    async def GetResponse(
        self, request: memory_pb2.GetResponseRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetResponseResponse:
        _require(request.tenant, request.response_id)
        record = await self._core.store.response(request.tenant, request.response_id)
        if record is None:
            raise not_found("response", request.response_id)
        return memory_pb2.GetResponseResponse(response=json_format.Parse(record, memory_pb2.StoredResponse()))

    async def DeleteResponse(
        self, request: memory_pb2.DeleteResponseRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteResponseResponse:
        _require(request.tenant, request.response_id)
        record = await self._core.store.delete_response(request.tenant, request.response_id)
        if record is None:
            raise not_found("response", request.response_id)
        return memory_pb2.DeleteResponseResponse(response=json_format.Parse(record, memory_pb2.StoredResponse()))

    async def ForgetTurn(
        self, request: memory_pb2.ForgetTurnRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ForgetTurnResponse:
        _require(request.tenant, request.session_id)
        if not request.turn_id:
            raise InvalidArgumentError("turn_id is required", "turn_id")
        index = request.message_index if request.HasField("message_index") else None
        if index is not None and index < 0:
            raise InvalidArgumentError("message_index must not be negative", "message_index")
        forgotten = await self._core.forget_turn(request.tenant, request.session_id, request.turn_id, index)
        return memory_pb2.ForgetTurnResponse(forgotten=forgotten)
