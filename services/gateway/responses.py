"""OpenAI's Responses API over the chat pipeline and the memory service:

    POST /v1/responses, GET/DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items,
    POST /v1/responses/input_tokens

A stored response belongs to a session (a conversation, see conversations.py): the one named by
`conversation`, the one its `previous_response_id` lives in, or a new hidden one. Its turn is the
session's turn, so chaining is the pipeline's history; a response record (the object answered,
its input items, its session and turn) is kept by the memory service with the session and goes
when the session goes. Chaining off a response that is not its session's newest (a branch) forks:
a new session starts with the turns up to that response.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2
from llmmesh.memory.v1 import memory_pb2
from services.common.context import call_metadata, request_id_var
from services.common.errors import MeshError
from services.gateway.auth import Caller
from services.gateway.clients import MeshClients
from services.gateway.errors import APIError
from services.gateway.limits import Limiter
from services.gateway.pipeline import Accepted, ChatPipeline, ChatTurn, Delta, Done, Event, merge_tool_calls
from services.gateway.responses_protocol import ResponseRequest, message_items, request_input_items
from services.gateway.sessions import list_object
from services.gateway.settings import GatewaySettings
from services.gateway.streaming import SSE_HEADERS, chat_logprobs, decision_headers, first_event, unless_disconnected
from services.gateway.streaming import usage as count_usage

T = TypeVar("T")


def new_session_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


class MemoryCalls:
    """The memory calls the Responses and Conversations endpoints make, with their deadline."""

    def __init__(self, settings: GatewaySettings, clients: MeshClients, pipeline: ChatPipeline) -> None:
        self.stub = clients.memory
        self.inference = clients.inference
        self.timeout = settings.upstream_timeout_s
        self.pipeline = pipeline

    async def __call__(self, rpc: Callable[..., Awaitable[T]], request: Any) -> T:
        return await rpc(request, timeout=self.timeout, metadata=call_metadata())

    async def turns(self, tenant: str, session_id: str, what: str, param: str | None) -> list[memory_pb2.Turn]:
        """The session's stored turns (this replica's pending one included); 404 naming `what`."""
        await self.pipeline.stored(tenant, session_id)
        try:
            reply = await self(
                self.stub.GetSession,
                memory_pb2.GetSessionRequest(tenant=tenant, session_id=session_id, with_turns=True),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found(what, session_id, param) from None
            raise
        return list(reply.turns)

    async def response(self, tenant: str, response_id: str, param: str | None = None) -> memory_pb2.StoredResponse:
        try:
            reply = await self(
                self.stub.GetResponse, memory_pb2.GetResponseRequest(tenant=tenant, response_id=response_id)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found("response", response_id, param) from None
            raise
        found: memory_pb2.StoredResponse = reply.response
        return found

    async def fork(self, tenant: str, turns: list[memory_pb2.Turn]) -> str:
        """A new session holding copies of `turns` (same turn ids, so item ids stay)."""
        session_id = new_session_id()
        await self(self.stub.CreateSession, memory_pb2.CreateSessionRequest(tenant=tenant, session_id=session_id))
        for turn in turns:
            await self(
                self.stub.Append,
                memory_pb2.AppendRequest(
                    tenant=tenant, session_id=session_id, turn_id=turn.turn_id, messages=turn.messages
                ),
            )
        return session_id


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"No {what} found with id '{ident}'.", "invalid_request_error", f"{what}_not_found", param)


def _usage(done: Done) -> dict[str, Any]:
    count_usage(done)  # the token counters
    return {
        "input_tokens": done.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": done.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _event_sse(payload: dict[str, Any]) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def create_router(
    settings: GatewaySettings,
    pipeline: ChatPipeline,
    clients: MeshClients,
    caller: Callable[..., Awaitable[Caller]],
    limiter: Limiter,
) -> APIRouter:
    router = APIRouter(tags=["responses"])
    memory = MemoryCalls(settings, clients, pipeline)

    async def session_for(body: ResponseRequest, tenant: str) -> tuple[str, str]:
        """(session the turn reads and writes, conversation id to echo)."""
        if body.conversation_id:
            await memory.turns(tenant, body.conversation_id, "conversation", "conversation")
            return body.conversation_id, body.conversation_id
        if body.previous_response_id:
            previous = await memory.response(tenant, body.previous_response_id, "previous_response_id")
            turns = await memory.turns(tenant, previous.session_id, "response", "previous_response_id")
            ids = [t.turn_id for t in turns]
            if previous.turn_id not in ids:
                raise APIError.invalid(
                    f"The turn of response '{body.previous_response_id}' is no longer stored.", "previous_response_id"
                )
            if ids[-1] == previous.turn_id:
                return previous.session_id, ""
            # A branch off an older response: its own session, with the history up to it.
            return await memory.fork(tenant, turns[: ids.index(previous.turn_id) + 1]), ""
        return (new_session_id() if body.stores else ""), ""

    @router.post("/v1/responses", response_model=None)
    async def create_response(body: ResponseRequest, request: Request, caller_: Caller = Depends(caller)) -> Response:
        body.check()
        tools_json, tool_choice, tool_name, single_tool_call = body.tool_settings()
        sampling = body.to_sampling()
        messages = body.to_messages()
        session_id, conversation_id = await session_for(body, caller_.tenant)
        turn = ChatTurn(
            request_id=request_id_var.get(),
            tenant=caller_.tenant,
            model=body.model,
            messages=messages,
            sampling=sampling,
            session_id=session_id,
            tools_json=tools_json,
            tool_choice=tool_choice,
            tool_name=tool_name,
            single_tool_call=single_tool_call,
            user=body.user or "",
            remember=body.stores or bool(conversation_id),
        )
        answer = _Answer(body, turn, conversation_id, memory)
        events = limiter.limit(caller_, turn, pipeline.run(turn))
        try:
            first = await unless_disconnected(request, first_event(events))
        except MeshError as exc:
            if exc.reason == "context_length_exceeded":
                raise APIError.invalid(exc.message, "input", "context_length_exceeded") from None
            raise
        if body.truncation != "auto" and first.dropped_turns:
            await events.aclose()  # type: ignore[attr-defined]
            raise APIError.invalid(
                "The conversation does not fit the model's context; send truncation='auto' to leave its "
                "oldest turns out.",
                "truncation",
                "context_length_exceeded",
            )
        headers = decision_headers(first)
        if body.stream:
            return StreamingResponse(
                answer.sse(events), media_type="text/event-stream", headers={**headers, **SSE_HEADERS}
            )
        result = await unless_disconnected(request, answer.collect(events))
        return JSONResponse(result, headers=headers)

    @router.post("/v1/responses/input_tokens")
    async def count_input_tokens(body: ResponseRequest, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        body.check()
        body.tool_settings()
        history: list[common_pb2.ChatMessage] = []
        session_id = body.conversation_id
        if body.previous_response_id:
            previous = await memory.response(caller_.tenant, body.previous_response_id, "previous_response_id")
            session_id = previous.session_id
        if session_id:
            turns = await memory.turns(caller_.tenant, session_id, "conversation", "conversation")
            history = [m for t in turns for m in t.messages if m.role]
        messages = body.to_messages()
        system = [m for m in messages if m.role in ("system", "developer")]
        rest = [m for m in messages if m.role not in ("system", "developer")]
        reply = await memory(
            memory.inference.CountTokens,
            inference_pb2.CountTokensRequest(model=body.model, messages=[*system, *history, *rest]),
        )
        return {"object": "response.input_tokens", "input_tokens": reply.prompt_tokens}

    @router.get("/v1/responses/{response_id}")
    async def get_response(
        response_id: str,
        stream: bool = Query(default=False),
        caller_: Caller = Depends(caller),
    ) -> dict[str, Any]:
        if stream:
            raise APIError.invalid(
                "Replaying a stored response as a stream is not supported.", "stream", "unsupported_parameter"
            )
        record = await memory.response(caller_.tenant, response_id)
        out: dict[str, Any] = json.loads(record.body_json)
        return out

    @router.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, caller_: Caller = Depends(caller)) -> dict[str, Any]:
        try:
            reply = await memory(
                memory.stub.DeleteResponse,
                memory_pb2.DeleteResponseRequest(tenant=caller_.tenant, response_id=response_id),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found("response", response_id) from None
            raise
        record = reply.response
        # Its turn goes too: the history, the queue and long-term memory no longer hold it.
        await pipeline.stored(caller_.tenant, record.session_id)
        await memory(
            memory.stub.ForgetTurn,
            memory_pb2.ForgetTurnRequest(tenant=caller_.tenant, session_id=record.session_id, turn_id=record.turn_id),
        )
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    @router.get("/v1/responses/{response_id}/input_items")
    async def input_items(
        response_id: str,
        after: str | None = Query(default=None, max_length=256),
        limit: int = Query(default=20, ge=1, le=100),
        order: str = Query(default="desc", pattern="^(asc|desc)$"),
        caller_: Caller = Depends(caller),
    ) -> dict[str, Any]:
        record = await memory.response(caller_.tenant, response_id)
        items: list[dict[str, Any]] = json.loads(record.input_json)
        return page(items, after, limit, order)

    return router


def page(items: list[dict[str, Any]], after: str | None, limit: int, order: str) -> dict[str, Any]:
    """A list object of `items` (oldest first) in `order`, from the item after `after`."""
    ordered = items if order == "asc" else items[::-1]
    if after:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise APIError.invalid(f"No item found with id '{after}'.", "after")
        ordered = ordered[ids.index(after) + 1 :]
    return list_object(ordered[:limit], len(ordered) > limit)


class _Answer:
    """Builds the response object and its stream events for one turn, and stores it."""

    def __init__(self, body: ResponseRequest, turn: ChatTurn, conversation_id: str, memory: MemoryCalls) -> None:
        self.body = body
        self.turn = turn
        self.memory = memory
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.conversation_id = conversation_id
        # The reply's place in the stored turn: after the request's non-system messages.
        self.reply_index = sum(1 for m in turn.messages if m.role not in ("system", "developer"))
        self.echoed = body.echoed()

    def envelope(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.body.model,
            "output": output,
            "usage": usage,
            "conversation": {"id": self.conversation_id} if self.conversation_id else None,
            **self.echoed,
        }

    def output(
        self, text: str, calls: dict[int, dict[str, Any]], logprobs: list[dict[str, Any]], status: str
    ) -> list[dict[str, Any]]:
        reply = common_pb2.ChatMessage(role="assistant", content=text)
        if calls:
            reply.tool_calls_json = json.dumps([calls[i] for i in sorted(calls)])
        items = message_items(self.turn.turn_id, self.reply_index, reply)
        for item in items:
            if item["type"] == "message":
                item["status"] = status
                item["content"][0]["logprobs"] = logprobs
        return items

    async def keep(self, result: dict[str, Any]) -> None:
        """Stores the response (store=true) once its turn is stored."""
        if not self.body.stores or not self.turn.session_id:
            return
        await self.memory.pipeline.stored(self.turn.tenant, self.turn.session_id)
        record = memory_pb2.StoredResponse(
            id=self.id,
            session_id=self.turn.session_id,
            turn_id=self.turn.turn_id,
            body_json=json.dumps(result),
            input_json=json.dumps(request_input_items(self.turn.turn_id, self.turn.messages)),
            created_at=self.created_at,
        )
        await self.memory(
            self.memory.stub.PutResponse, memory_pb2.PutResponseRequest(tenant=self.turn.tenant, response=record)
        )

    async def collect(self, events: AsyncIterator[Event]) -> dict[str, Any]:
        texts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        logprobs: list[dict[str, Any]] = []
        finish = "stop"
        async for event in events:
            if isinstance(event, Delta) and event.index == 0:
                texts.append(event.text)
                merge_tool_calls(calls, event.tool_calls)
                logprobs.extend(chat_logprobs(event.logprobs))
            elif isinstance(event, Done):
                finish = event.finish_reasons.get(0, "stop")
                status = "incomplete" if finish == "length" else "completed"
                result = self.envelope(status, self.output("".join(texts), calls, logprobs, status), _usage(event))
                await self.keep(result)
                return result
        raise MeshError(grpc.StatusCode.INTERNAL, "the generation ended without a result")

    async def sse(self, events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
        stream = _EventStream(self)
        async for chunk in stream.run(events):
            yield chunk


class _EventStream:
    """OpenAI's Responses event sequence, numbered, for one turn."""

    def __init__(self, answer: _Answer) -> None:
        self.answer = answer
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # in output order, as they are finished
        self.text: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.message_index: int | None = None  # output_index of the message item, once open
        self.calls: dict[int, dict[str, Any]] = {}  # tool-call index -> the function_call item
        self.call_index: dict[int, int] = {}  # tool-call index -> output_index
        self.opened = 0

    def event(self, type_: str, **fields: Any) -> bytes:
        payload = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return _event_sse(payload)

    @property
    def message_id(self) -> str:
        return f"msg_{self.answer.turn.turn_id}_{self.answer.reply_index}"

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": self.logprobs if text else []}

    def _open_message(self) -> list[bytes]:
        self.message_index = self.opened
        self.opened += 1
        item = {"id": self.message_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        return [
            self.event("response.output_item.added", output_index=self.message_index, item=item),
            self.event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=self.message_index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def on_delta(self, event: Delta) -> list[bytes]:
        out: list[bytes] = []
        if event.text:
            if self.message_index is None:
                out += self._open_message()
            pieces = chat_logprobs(event.logprobs)
            self.text.append(event.text)
            self.logprobs.extend(pieces)
            out.append(
                self.event(
                    "response.output_text.delta",
                    item_id=self.message_id,
                    output_index=self.message_index,
                    content_index=0,
                    delta=event.text,
                    logprobs=pieces,
                )
            )
        for piece in event.tool_calls:
            out += self._on_call(piece)
        return out

    def _on_call(self, piece: inference_pb2.ToolCallDelta) -> list[bytes]:
        out: list[bytes] = []
        item = self.calls.get(piece.index)
        if item is None:
            item = {
                "id": f"fc_{self.answer.turn.turn_id}_{self.answer.reply_index}_{piece.index}",
                "type": "function_call",
                "call_id": piece.id,
                "name": piece.name,
                "arguments": "",
                "status": "in_progress",
            }
            self.calls[piece.index] = item
            self.call_index[piece.index] = self.opened
            self.opened += 1
            out.append(self.event("response.output_item.added", output_index=self.call_index[piece.index], item=item))
        item["call_id"] = piece.id or item["call_id"]
        item["name"] = piece.name or item["name"]
        if piece.arguments:
            item["arguments"] += piece.arguments
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.call_index[piece.index],
                    delta=piece.arguments,
                )
            )
        return out

    def close_items(self, status: str) -> tuple[list[bytes], list[dict[str, Any]]]:
        """The .done events of every open item, and the output in order."""
        out: list[bytes] = []
        if self.message_index is None and not self.calls:
            out += self._open_message()  # an empty answer is still one (empty) message
        done: dict[int, dict[str, Any]] = {}
        if self.message_index is not None:
            text = "".join(self.text)
            part = self._part(text)
            out.append(
                self.event(
                    "response.output_text.done",
                    item_id=self.message_id,
                    output_index=self.message_index,
                    content_index=0,
                    text=text,
                    logprobs=self.logprobs,
                )
            )
            out.append(
                self.event(
                    "response.content_part.done",
                    item_id=self.message_id,
                    output_index=self.message_index,
                    content_index=0,
                    part=part,
                )
            )
            item = {"id": self.message_id, "type": "message", "role": "assistant", "status": status, "content": [part]}
            out.append(self.event("response.output_item.done", output_index=self.message_index, item=item))
            done[self.message_index] = item
        for index in sorted(self.calls):
            item = {**self.calls[index], "status": "completed"}
            output_index = self.call_index[index]
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=output_index,
                    arguments=item["arguments"],
                )
            )
            out.append(self.event("response.output_item.done", output_index=output_index, item=item))
            done[output_index] = item
        return out, [done[i] for i in sorted(done)]

    async def run(self, events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
        answer = self.answer
        snapshot = answer.envelope("in_progress", [])
        yield self.event("response.created", response=snapshot)
        yield self.event("response.in_progress", response=snapshot)
        try:
            async for event in events:
                if isinstance(event, Delta) and event.index == 0:
                    for chunk in self.on_delta(event):
                        yield chunk
                elif isinstance(event, Done):
                    finish = event.finish_reasons.get(0, "stop")
                    status = "incomplete" if finish == "length" else "completed"
                    chunks, output = self.close_items(status)
                    for chunk in chunks:
                        yield chunk
                    result = answer.envelope(status, output, _usage(event))
                    await answer.keep(result)
                    kind = "response.incomplete" if status == "incomplete" else "response.completed"
                    yield self.event(kind, response=result)
                    return
                elif not isinstance(event, Accepted):
                    continue
            raise MeshError(grpc.StatusCode.INTERNAL, "the generation ended without a result")
        except MeshError as exc:
            # Headers are gone: the failure travels in the stream, as OpenAI's does.
            code = "rate_limit_exceeded" if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "server_error"
            failed = answer.envelope("failed", [], error={"code": code, "message": exc.message})
            yield self.event("response.failed", response=failed)
