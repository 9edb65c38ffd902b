"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the chat
pipeline, JSON and SSE. The request becomes a ChatTurn (anthropic_protocol.py); the pipeline's
events become a message object, or Anthropic's stream of events:

    message_start, then per content block (text, or one tool_use per call) content_block_start,
    content_block_delta (text_delta / input_json_delta)..., content_block_stop; a ping after the
    first block opens; then message_delta (stop_reason, output tokens) and message_stop.

Sessions (X-Session-Id), agents, limits and usage work as for chat completions; errors on these
routes are in Anthropic's shape (http_api.py picks the shape by path)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmmesh.inference.v1 import inference_pb2
from llmmesh.router.v1 import router_pb2
from services.common.context import call_metadata, request_id_var
from services.common.errors import MeshError, from_rpc_error
from services.gateway.anthropic_protocol import CountTokensRequest, MessagesRequest, wire_tool_id
from services.gateway.auth import Caller
from services.gateway.clients import MeshClients
from services.gateway.errors import APIError
from services.gateway.limits import Limiter
from services.gateway.pipeline import Accepted, ChatPipeline, ChatTurn, ChoiceDone, Delta, Done, merge_tool_calls
from services.gateway.protocol import SESSION_ID_PATTERN
from services.gateway.settings import GatewaySettings
from services.gateway.streaming import (
    AGENT_HEADER,
    NO_RESULT,
    RECALL_HEADER,
    SESSION_HEADER,
    SSE_HEADERS,
    decision_headers,
    first_event,
    unless_disconnected,
    usage,
)

log = logging.getLogger(__name__)

PATH_PREFIX = "/v1/messages"


def is_messages_path(path: str) -> bool:
    """The routes whose errors are in Anthropic's shape."""
    return path == PATH_PREFIX or path.startswith(PATH_PREFIX + "/")


def create_router(
    settings: GatewaySettings,
    pipeline: ChatPipeline,
    clients: MeshClients,
    caller: Callable[..., Awaitable[Caller]],
    limiter: Limiter,
) -> APIRouter:
    router = APIRouter()

    @router.post(PATH_PREFIX, response_model=None)
    async def create_message(
        body: MessagesRequest,
        request: Request,
        x_session_id: str | None = Header(default=None, alias=SESSION_HEADER, pattern=SESSION_ID_PATTERN),
        x_llmmesh_agent: str | None = Header(default=None, alias=AGENT_HEADER, max_length=64),
        caller_: Caller = Depends(caller),
    ) -> Response:
        session_id = x_session_id or ""
        tools_json, tool_choice, tool_name, single_tool_call = body.tool_settings()
        turn = ChatTurn(
            request_id=request_id_var.get(),
            tenant=caller_.tenant,
            model=body.model,
            messages=body.to_messages(),
            sampling=body.to_sampling(),
            session_id=session_id,
            tools_json=tools_json,
            tool_choice=tool_choice,
            tool_name=tool_name,
            single_tool_call=single_tool_call,
            user=body.user,
            agent=x_llmmesh_agent or "",
        )
        headers = {SESSION_HEADER: session_id} if session_id else {}
        events = limiter.limit(caller_, turn, pipeline.run(turn))
        # The decision (Accepted) comes first: a bad request fails here, before any 200.
        first = await unless_disconnected(request, first_event(events))
        headers.update(decision_headers(first))
        if first.recall_skipped:
            headers[RECALL_HEADER] = "skipped"
        reply = _Reply(body.model)
        if body.stream:
            return StreamingResponse(
                reply.sse(first, events), media_type="text/event-stream", headers={**headers, **SSE_HEADERS}
            )
        return JSONResponse(await unless_disconnected(request, reply.collect(events)), headers=headers)

    @router.post(PATH_PREFIX + "/count_tokens", response_model=None)
    async def count_tokens(body: CountTokensRequest, caller_: Caller = Depends(caller)) -> dict[str, int]:
        """The prompt's tokens as the model that would answer it counts them (its chat template
        and tokenizer): the request's own messages, not a session's history or an agent's persona."""
        allowed = limiter.limits_of(caller_).models
        if allowed and body.model not in allowed:
            raise APIError(403, f"This API key may not use the model `{body.model}`.", "permission_error")
        messages = body.to_messages()
        timeout, metadata = settings.upstream_timeout_s, call_metadata()
        try:
            route = await clients.router.Route(
                router_pb2.RouteRequest(model=body.model, messages=messages, tenant=caller_.tenant),
                timeout=timeout,
                metadata=metadata,
            )
            counted = await clients.inference.CountTokens(
                inference_pb2.CountTokensRequest(model=route.backend_model, messages=messages),
                timeout=timeout,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return {"input_tokens": counted.prompt_tokens}

    return router


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def _usage(done: Done) -> dict[str, int]:
    counted = usage(done)  # also the token counters every front door keeps
    return {
        "input_tokens": counted["prompt_tokens"],
        "output_tokens": counted["completion_tokens"],
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _stop_reason(finish_reason: str, tool_calls: bool) -> str:
    """Anthropic's stop_reason. A matched stop sequence reads as end_turn: the engine does not
    say which of its stops ended the text, so `stop_sequence` stays null."""
    if tool_calls:
        return "tool_use"
    return "max_tokens" if finish_reason == "length" else "end_turn"


def _tool_use_id(call_id: str) -> str:
    return wire_tool_id(call_id) or f"toolu_{uuid.uuid4().hex}"


def _tool_input(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call["function"]["arguments"] or "{}"
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        # The tool parser passes only complete calls; an object is what a schema-bound call is.
        log.warning("tool call arguments are not a JSON object", extra={"tool": call["function"]["name"]})
        return {}
    return parsed


class _Reply:
    """Builds the message object, or the stream of events, of one turn (choice 0: n is 1)."""

    def __init__(self, model: str) -> None:
        self.id = f"msg_{uuid.uuid4().hex}"  # the server's own: the request id may be the client's
        self.model = model

    def _message(
        self, content: list[dict[str, Any]], stop_reason: str | None, usage_: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": self.model,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage_,
        }

    async def collect(self, events: AsyncIterator[Any]) -> dict[str, Any]:
        texts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish = "stop"
        async for event in events:
            if isinstance(event, Delta) and event.index == 0:
                texts.append(event.text)
                merge_tool_calls(calls, event.tool_calls)
            elif isinstance(event, ChoiceDone) and event.index == 0:
                finish = event.finish_reason
            elif isinstance(event, Done):
                text = "".join(texts)
                content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
                content += [
                    {
                        "type": "tool_use",
                        "id": _tool_use_id(call["id"]),
                        "name": call["function"]["name"],
                        "input": _tool_input(call),
                    }
                    for _, call in sorted(calls.items())
                ]
                return self._message(content, _stop_reason(finish, bool(calls)), _usage(event))
        raise MeshError(*NO_RESULT)

    async def sse(self, first: Accepted, events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        start_usage = {
            "input_tokens": first.prompt_tokens,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        yield _event("message_start", {"message": self._message([], None, start_usage)})
        blocks = _Blocks()
        finish = "stop"
        try:
            async for event in events:
                if isinstance(event, Delta) and event.index == 0:
                    for frame in blocks.add(event):
                        yield frame
                elif isinstance(event, ChoiceDone) and event.index == 0:
                    finish = event.finish_reason
                elif isinstance(event, Done):
                    for frame in blocks.close():
                        yield frame
                    stop = {"stop_reason": _stop_reason(finish, blocks.tool_calls), "stop_sequence": None}
                    output = {"output_tokens": _usage(event)["output_tokens"]}
                    yield _event("message_delta", {"delta": stop, "usage": output})
                    yield _event("message_stop", {})
                    return
            raise MeshError(*NO_RESULT)
        except MeshError as exc:
            # Headers are gone already: the error travels in the stream, as Anthropic sends it.
            body = APIError.from_mesh(exc).anthropic_body()
            yield _event("error", {"error": body["error"]})


class _Blocks:
    """The content blocks of a stream: text opens (or goes on in) a text block, a tool call's
    first piece opens its tool_use block; opening one closes the one before."""

    def __init__(self) -> None:
        self.opened = 0
        self.current: tuple[str, int] | None = None  # ("text", -1) or ("tool_use", call index)
        self.tool_calls = False

    def _open(self, key: tuple[str, int], block: dict[str, Any]) -> list[bytes]:
        frames = self.close()
        frames.append(_event("content_block_start", {"index": self.opened, "content_block": block}))
        if self.opened == 0:
            frames.append(_event("ping", {}))  # where Anthropic sends it
        self.current, self.opened = key, self.opened + 1
        return frames

    def _delta(self, delta: dict[str, str]) -> bytes:
        return _event("content_block_delta", {"index": self.opened - 1, "delta": delta})

    def add(self, delta: Delta) -> list[bytes]:
        frames: list[bytes] = []
        if delta.text:
            if self.current != ("text", -1):
                frames += self._open(("text", -1), {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": delta.text}))
        for piece in delta.tool_calls:
            self.tool_calls = True
            if self.current != ("tool_use", piece.index):
                block = {"type": "tool_use", "id": _tool_use_id(piece.id), "name": piece.name, "input": {}}
                frames += self._open(("tool_use", piece.index), block)
            if piece.arguments:
                frames.append(self._delta({"type": "input_json_delta", "partial_json": piece.arguments}))
        return frames

    def close(self) -> list[bytes]:
        if self.current is None:
            return []
        self.current = None
        return [_event("content_block_stop", {"index": self.opened - 1})]
