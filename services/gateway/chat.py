"""POST /v1/chat/completions: OpenAI's chat API, JSON and SSE, over the chat pipeline."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmmesh.inference.v1 import inference_pb2
from services.common.context import request_id_var
from services.common.errors import MeshError
from services.gateway.auth import Caller
from services.gateway.errors import APIError
from services.gateway.limits import Limiter
from services.gateway.pipeline import Accepted, ChatPipeline, ChatTurn, ChoiceDone, Delta, Done, merge_tool_calls
from services.gateway.protocol import SESSION_ID_PATTERN, ChatCompletionRequest
from services.gateway.streaming import (
    AGENT_HEADER,
    DONE,
    NO_RESULT,
    RECALL_HEADER,
    SESSION_HEADER,
    SSE_HEADERS,
    chat_logprobs,
    decision_headers,
    first_event,
    sse,
    unless_disconnected,
    usage,
)


def create_router(pipeline: ChatPipeline, caller: Callable[..., Awaitable[Caller]], limiter: Limiter) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        x_session_id: str | None = Header(default=None, alias=SESSION_HEADER, pattern=SESSION_ID_PATTERN),
        # Names the agent that answers, whatever the model (an unknown one is a 400).
        x_llmmesh_agent: str | None = Header(default=None, alias=AGENT_HEADER, max_length=64),
        caller_: Caller = Depends(caller),
    ) -> Response:
        session_id = body.session_id or x_session_id or ""
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
            user=body.user or "",
            agent=x_llmmesh_agent or "",
        )
        headers = {SESSION_HEADER: session_id} if session_id else {}
        completion = _Completion(turn, body)
        # Per-key limits (limits.py): a refusal before Accepted is an error response, after it
        # an error event; usage is recorded when the turn ends.
        events = limiter.limit(caller_, turn, pipeline.run(turn))
        # The decision (Accepted) comes first: a bad request fails here, before any 200.
        first = await unless_disconnected(request, first_event(events))
        headers.update(decision_headers(first))
        if first.recall_skipped:
            headers[RECALL_HEADER] = "skipped"
        if body.stream:
            return StreamingResponse(
                completion.sse(first, events),
                media_type="text/event-stream",
                headers={**headers, **SSE_HEADERS},
            )
        result = await unless_disconnected(request, completion.collect(events))
        return JSONResponse(result, headers=headers)

    return router


class _Completion:
    """Builds chat.completion objects and chat.completion.chunk events for one turn."""

    def __init__(self, turn: ChatTurn, body: ChatCompletionRequest) -> None:
        self.turn = turn
        self.body = body
        self.id = f"chatcmpl-{uuid.uuid4().hex}"  # the server's own: a request id may repeat
        self.created = int(time.time())

    def _envelope(self, obj: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.body.model}
        if self.turn.session_id:
            out["session_id"] = self.turn.session_id
        return out

    async def collect(self, events: AsyncIterator[Any]) -> dict[str, Any]:
        n = self.body.n
        texts: list[list[str]] = [[] for _ in range(n)]
        calls: list[dict[int, dict[str, Any]]] = [{} for _ in range(n)]
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        async for event in events:
            if isinstance(event, Delta):
                texts[event.index].append(event.text)
                merge_tool_calls(calls[event.index], event.tool_calls)
                if event.logprobs:
                    logprobs[event.index].extend(chat_logprobs(event.logprobs))
            elif isinstance(event, Done):
                out = self._envelope("chat.completion")
                out["choices"] = [
                    {
                        "index": i,
                        "message": _message("".join(texts[i]), [calls[i][c] for c in sorted(calls[i])]),
                        "logprobs": {"content": logprobs[i]} if self.body.logprobs else None,
                        "finish_reason": event.finish_reasons.get(i, "stop"),
                    }
                    for i in range(n)
                ]
                out["usage"] = usage(event)
                return out
        raise MeshError(*NO_RESULT)

    def _chunk(self, choices: list[dict[str, Any]], usage_: dict[str, Any] | None = None) -> bytes:
        out = self._envelope("chat.completion.chunk")
        out["choices"] = choices
        if usage_ is not None:
            out["usage"] = usage_
        return sse(out)

    def _delta_chunk(self, event: Delta) -> bytes:
        delta: dict[str, Any] = {}
        if event.text or not event.tool_calls:
            delta["content"] = event.text
        if event.tool_calls:
            delta["tool_calls"] = [_tool_call_piece(piece) for piece in event.tool_calls]
        choice: dict[str, Any] = {"index": event.index, "delta": delta, "finish_reason": None}
        if self.body.logprobs:
            choice["logprobs"] = {"content": chat_logprobs(event.logprobs)}
        return self._chunk([choice])

    async def sse(self, first: Any, events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        greeted = False
        try:
            event = first
            while True:
                if not greeted and not isinstance(event, Accepted):
                    # The role chunks go out with the first output, as OpenAI and vLLM send them:
                    # clients time the first token from the first chunk with choices.
                    greeted = True
                    for i in range(self.body.n):
                        yield self._chunk(
                            [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                        )
                if isinstance(event, Delta):
                    yield self._delta_chunk(event)
                elif isinstance(event, ChoiceDone):
                    yield self._chunk([{"index": event.index, "delta": {}, "finish_reason": event.finish_reason}])
                elif isinstance(event, Done):
                    usage_ = usage(event)
                    if include_usage:
                        yield self._chunk([], usage_)
                    break
                elif not isinstance(event, Accepted):
                    raise TypeError(f"unexpected event {event!r}")
                event = await anext(events)
        except MeshError as exc:
            # Headers are gone already: the error travels in the stream, as OpenAI does it.
            yield sse(APIError.from_mesh(exc, 0).body())
        except StopAsyncIteration:
            yield sse(APIError.from_mesh(MeshError(*NO_RESULT)).body())
        yield DONE


def _message(text: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message: with tool calls and no text, content is null (as OpenAI's)."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _tool_call_piece(piece: inference_pb2.ToolCallDelta) -> dict[str, Any]:
    """A `delta.tool_calls` entry: id, type and name come with a call's first piece only."""
    out: dict[str, Any] = {"index": piece.index}
    function: dict[str, str] = {"arguments": piece.arguments}
    if piece.id:
        out["id"] = piece.id
        out["type"] = "function"
    if piece.name:
        function["name"] = piece.name
    out["function"] = function
    return out
