"""The OpenAI REST front end: JSON and SSE in, the chat pipeline behind."""

from __future__ import annotations

import logging
from collections import deque

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.context import REQUEST_ID_HEADER, accepted_request_id, request_id_var
from services.common.errors import MeshError
from services.gateway import chat, completions, cors, embeddings, messages, models, openapi, sessions, usage
from services.gateway.auth import Authenticator, Caller
from services.gateway.clients import MeshClients
from services.gateway.conversations import create_router as conversations_router
from services.gateway.errors import APIError
from services.gateway.limits import Limiter
from services.gateway.pipeline import ChatPipeline
from services.gateway.responses import create_router as responses_router
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


HTTP_REQUESTS = Counter(
    "llmmesh_gateway_http_requests_total", "REST requests by route and status.", ["route", "status"]
)


def _error_response(error: APIError, headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    """The error in OpenAI's shape, or Anthropic's on the Messages API's routes."""
    body = error.anthropic_body() if messages.is_messages_path(path) else error.body()
    return JSONResponse(body, status_code=error.status, headers={**error.headers, **(headers or {})})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "header", "path"):
        loc = loc[1:]  # where it came from; the param is what follows
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    if first.get("type") == "extra_forbidden":  # the APIs whose request models are strict
        return f"Unknown parameter: '{param}'.", param
    return f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param


_KNOWN_ROUTES = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/embeddings",
    "/v1/models",
    "/v1/usage",
    "/v1/sessions",
    "/v1/memories",
    "/v1/memories/search",
    "/v1/responses",
    "/v1/conversations",
    "/healthz",
    "/metrics",
    "/docs",
    "/openapi.json",
}
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()


class RequestContextMiddleware:
    """Request id in (checked, or made) and out, and a request counter. Plain ASGI: Starlette's
    BaseHTTPMiddleware would pipe every streamed chunk through an extra task and stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A client's id that is not safe to log and pass on is replaced (context.py).
        request_id = accepted_request_id(dict(scope["headers"]).get(_REQUEST_ID_HEADER))
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
        await _error_response(error, path=scope["path"])(scope, receive, send)

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


def create_app(
    settings: GatewaySettings, pipeline: ChatPipeline, clients: MeshClients, auth: Authenticator, limiter: Limiter
) -> FastAPI:
    app = FastAPI(title="llmmesh", version="0.1.0", description="OpenAI-compatible chat API of the llmmesh mesh.")

    openapi.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)  # even a 413 carries the request id
    cors.install(app, settings.cors_origins)  # outermost, when set: every answer carries CORS

    async def caller(request: Request) -> Caller:
        """Who calls, from the API key (401 without a valid one)."""
        return await auth.request_caller(request.headers)

    async def tenant(caller_: Caller = Depends(caller)) -> str:
        return caller_.tenant

    app.include_router(chat.create_router(pipeline, caller, limiter))
    app.include_router(completions.create_router(pipeline, caller, limiter))
    app.include_router(messages.create_router(settings, pipeline, clients, caller, limiter))
    app.include_router(usage.create_router(limiter.usage, caller))
    app.include_router(models.create_router(settings, pipeline, tenant))
    app.include_router(sessions.create_router(settings, clients, tenant))
    app.include_router(embeddings.create_router(settings, clients, caller, limiter.usage))
    app.include_router(responses_router(settings, pipeline, clients, caller, limiter))
    app.include_router(conversations_router(settings, pipeline, clients, caller))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(APIError.invalid(message, param), path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type_), path=request.url.path)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc, path=request.url.path)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        error = APIError(500, "The server had an error while processing your request.", "server_error")
        return _error_response(error, path=request.url.path)

    @app.exception_handler(MeshError)
    async def on_mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        return _error_response(APIError.from_mesh(exc, settings.retry_after_s), path=request.url.path)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def on_rpc_error(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        # A route that calls an internal service directly: its status is the answer.
        return _error_response(APIError.from_rpc(exc, settings.retry_after_s), path=request.url.path)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
