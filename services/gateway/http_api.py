"""The OpenAI REST front end: JSON and SSE in, the chat pipeline behind."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.context import REQUEST_ID_HEADER, new_request_id, request_id_var
from services.common.errors import MeshError
from services.gateway import embeddings
from services.gateway.auth import Authenticator
from services.gateway.clients import MeshClients
from services.gateway.errors import APIError
from services.gateway.pipeline import Accepted, ChatPipeline, ChatTurn, ChoiceDone, Delta, Done
from services.gateway.protocol import ChatCompletionRequest
from services.gateway.sessions import create_router
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Session-Id"
RECALL_HEADER = "X-Llmmesh-Recall"

HTTP_REQUESTS = Counter(
    "llmmesh_gateway_http_requests_total", "REST requests by route and status.", ["route", "status"]
)
TOKENS = Counter("llmmesh_gateway_tokens_total", "Tokens served, by kind.", ["kind"])


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers={**error.headers, **(headers or {})})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    return f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param


_KNOWN_ROUTES = {
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/sessions",
    "/v1/memories",
    "/v1/memories/search",
    "/healthz",
    "/metrics",
    "/docs",
    "/openapi.json",
}
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()


class RequestContextMiddleware:
    """Request id in (or made) and out, and a request counter. Plain ASGI: Starlette's
    BaseHTTPMiddleware would pipe every streamed chunk through an extra task and stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(_REQUEST_ID_HEADER)
        request_id = incoming.decode("latin-1") if incoming else new_request_id()
        request_id_var.set(request_id)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (_REQUEST_ID_HEADER, request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"] if scope["path"] in _KNOWN_ROUTES else "other"
            HTTP_REQUESTS.labels(path, str(status)).inc()


class BodyLimitMiddleware:
    """413 in OpenAI's shape for a body over `max_bytes`: at once when Content-Length says so,
    else as soon as the bytes read pass the limit (a chunked body is never read in full). The
    body is read here, then handed on; later messages (a disconnect) come straight through."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"The request body is larger than the limit of {self.max_bytes} bytes.",
            "invalid_request_error",
            "request_too_large",
        )
        await _error_response(error)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body: deque[Message] = deque()
        received = 0
        while True:
            message = await receive()
            body.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app sees it
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return body.popleft() if body else await receive()

        await self.app(scope, replay, send)


def create_app(settings: GatewaySettings, pipeline: ChatPipeline, clients: MeshClients, auth: Authenticator) -> FastAPI:
    app = FastAPI(title="llmmesh", version="0.1.0", description="OpenAI-compatible chat API of the llmmesh mesh.")

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)  # outermost: even a 413 carries the request id

    async def tenant(request: Request) -> str:
        """The caller's tenant, from its API key (401 without a valid one)."""
        return await auth.tenant(request.headers.get("authorization"))

    app.include_router(create_router(settings, clients, tenant))
    app.include_router(embeddings.create_router(settings, clients, tenant))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(APIError.invalid(message, param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type_))

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(APIError(500, "The server had an error while processing your request.", "server_error"))

    @app.exception_handler(MeshError)
    async def on_mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        return _error_response(APIError.from_mesh(exc, settings.retry_after_s))

    @app.exception_handler(grpc.aio.AioRpcError)
    async def on_rpc_error(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        # A route that calls an internal service directly: its status is the answer.
        return _error_response(APIError.from_rpc(exc, settings.retry_after_s))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def model_objects() -> list[dict[str, Any]]:
        """The chat models the router serves, and the embedding model."""
        models = [
            {"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by} for m in await pipeline.list_models()
        ]
        models.append({"id": settings.embedding_model, "object": "model", "created": 0, "owned_by": "llmmesh"})
        return models

    @app.get("/v1/models", dependencies=[Depends(tenant)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": await model_objects()}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(tenant)])
    async def get_model(model_id: str) -> dict[str, Any]:
        for model in await model_objects():
            if model["id"] == model_id:
                return model
        raise APIError(
            404, f"The model `{model_id}` does not exist.", "invalid_request_error", "model_not_found", "model"
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        x_session_id: str | None = Header(default=None, alias=SESSION_HEADER),
        tenant_: str = Depends(tenant),
    ) -> Response:
        session_id = body.session_id or x_session_id or ""
        turn = ChatTurn(
            request_id=request_id_var.get(),
            tenant=tenant_,
            model=body.model,
            messages=body.to_messages(),
            sampling=body.to_sampling(),
            session_id=session_id,
            tools_json=json.dumps(body.tools) if body.tools else "",
            user=body.user or "",
        )
        headers = {SESSION_HEADER: session_id} if session_id else {}
        completion = _Completion(turn, body)
        events = pipeline.run(turn)
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

    return app


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
        return _sse(out)

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
            yield _sse(APIError.from_mesh(exc, 0).body())
        except StopAsyncIteration:
            yield _sse(APIError.from_mesh(MeshError(*_NO_RESULT)).body())
        yield b"data: [DONE]\n\n"


_NO_RESULT = (grpc.StatusCode.INTERNAL, "the generation ended without a result")
