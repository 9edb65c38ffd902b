"""POST /v1/chat/completions: OpenAI's chat API, JSON and SSE, over the chat pipeline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter

from services.common.context import request_id_var
from services.common.errors import MeshError
from services.gateway.auth import Caller
from services.gateway.errors import APIError
from services.gateway.limits import Limiter
from services.gateway.pipeline import Accepted, ChatPipeline, ChatTurn, ChoiceDone, Delta, Done
from services.gateway.protocol import SESSION_ID_PATTERN, ChatCompletionRequest

SESSION_HEADER = "X-Session-Id"
RECALL_HEADER = "X-Llmmesh-Recall"

TOKENS = Counter("llmmesh_gateway_tokens_total", "Tokens served, by kind.", ["kind"])


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def create_router(pipeline: ChatPipeline, caller: Callable[..., Awaitable[Caller]], limiter: Limiter) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        x_session_id: str | None = Header(default=None, alias=SESSION_HEADER, pattern=SESSION_ID_PATTERN),
        caller_: Caller = Depends(caller),
    ) -> Response:
        session_id = body.session_id or x_session_id or ""
        turn = ChatTurn(
            request_id=request_id_var.get(),
            tenant=caller_.tenant,
            model=body.model,
            messages=body.to_messages(),
            sampling=body.to_sampling(),
            session_id=session_id,
            tools_json=json.dumps(body.tools) if body.tools else "",
            user=body.user or "",
        )
        headers = {SESSION_HEADER: session_id} if session_id else {}
        completion = _Completion(turn, body)
        # Per-key limits (limits.py): a refusal before Accepted is an error response, after it
        # an error event; usage is recorded when the turn ends.
        events = limiter.limit(caller_, turn, pipeline.run(turn))
        # The decision (Accepted) comes first: a bad request fails here, before any 200.
        first = await _unless_disconnected(request, _first_event(events))
        if first.recall_skipped:
            headers[RECALL_HEADER] = "skipped"
        if body.stream:
            return StreamingResponse(
                completion.sse(first, events),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result = await _unless_disconnected(request, completion.collect(events))
        return JSONResponse(result, headers=headers)

    return router


async def _first_event(events: AsyncIterator[Any]) -> Accepted:
    """The Accepted event: once it is here, the request is good and the stream may start."""
    first = await anext(events)
    if not isinstance(first, Accepted):
        raise MeshError(*_NO_RESULT)
    return first


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Runs `work`, cancelling it (and so the engine request) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()


class _Completion:
    """Builds chat.completion objects and chat.completion.chunk events for one turn."""

    def __init__(self, turn: ChatTurn, body: ChatCompletionRequest) -> None:
        self.turn = turn
        self.body = body
        self.id = f"chatcmpl-{turn.request_id}"
        self.created = int(time.time())

    def _envelope(self, obj: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.body.model}
        if self.turn.session_id:
            out["session_id"] = self.turn.session_id
        return out

    @staticmethod
    def _usage(done: Done) -> dict[str, int]:
        TOKENS.labels("prompt").inc(done.prompt_tokens)
        TOKENS.labels("completion").inc(done.completion_tokens)
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        }

    async def collect(self, events: AsyncIterator[Any]) -> dict[str, Any]:
        texts: dict[int, list[str]] = {i: [] for i in range(self.body.n)}
        async for event in events:
            if isinstance(event, Delta):
                texts[event.index].append(event.text)
            elif isinstance(event, Done):
                out = self._envelope("chat.completion")
                out["choices"] = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": "".join(parts)},
                        "logprobs": None,
                        "finish_reason": event.finish_reasons.get(i, "stop"),
                    }
                    for i, parts in sorted(texts.items())
                ]
                out["usage"] = self._usage(event)
                return out
        raise MeshError(*_NO_RESULT)

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        out = self._envelope("chat.completion.chunk")
        out["choices"] = choices
        if usage is not None:
            out["usage"] = usage
        return sse(out)

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
                    yield self._chunk([{"index": event.index, "delta": {"content": event.text}, "finish_reason": None}])
                elif isinstance(event, ChoiceDone):
                    yield self._chunk([{"index": event.index, "delta": {}, "finish_reason": event.finish_reason}])
                elif isinstance(event, Done):
                    usage = self._usage(event)
                    if include_usage:
                        yield self._chunk([], usage)
                    break
                elif not isinstance(event, Accepted):
                    raise TypeError(f"unexpected event {event!r}")
                event = await anext(events)
        except MeshError as exc:
            # Headers are gone already: the error travels in the stream, as OpenAI does it.
            yield sse(APIError.from_mesh(exc, 0).body())
        except StopAsyncIteration:
            yield sse(APIError.from_mesh(MeshError(*_NO_RESULT)).body())
        yield b"data: [DONE]\n\n"


_NO_RESULT = (grpc.StatusCode.INTERNAL, "the generation ended without a result")
