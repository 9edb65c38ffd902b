"""Server interceptor: request id from metadata into the log context, metrics per call,
and exceptions turned into rich gRPC statuses in one place (see services.common.errors)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.context import REQUEST_ID_HEADER, accepted_request_id, request_id_var
from services.common.errors import INTERNAL_MESSAGE, MeshError, to_status
from services.common.metrics import RPC_HANDLED, RPC_LATENCY

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            return accepted_request_id(value)
    return accepted_request_id(None)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, translate: Callable[[Exception], MeshError | None] | None = None) -> None:
        self._service = service
        self._translate = translate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        request_id = _request_id(handler_call_details.invocation_metadata)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, request_id),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _record(self, method: str, started: float, context: grpc.aio.ServicerContext) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        RPC_HANDLED.labels(self._service, method, name).inc()
        RPC_LATENCY.labels(self._service, method).observe(time.perf_counter() - started)

    def _wrap_unary(self, behavior: Behavior, method: str, request_id: str) -> Behavior:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id_var.set(request_id)
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                await _abort_for(self._translate(exc) if self._translate else None, exc, context)
            finally:
                self._record(method, started, context)

        return wrapper

    def _wrap_stream(self, behavior: Behavior, method: str, request_id: str) -> Behavior:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request_id_var.set(request_id)
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                await _abort_for(self._translate(exc) if self._translate else None, exc, context)
            finally:
                self._record(method, started, context)

        return wrapper


async def _abort_for(translated: MeshError | None, exc: Exception, context: grpc.aio.ServicerContext) -> None:
    """Turns a domain exception into the call's status; re-raises what is already a status.
    Whatever is not a MeshError is a bug: logged with its traceback, and the caller learns
    nothing of our internals."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if translated is not None:
        error = translated
    elif isinstance(exc, MeshError):
        error = exc
    else:
        log.exception("unhandled error in RPC")
        error = MeshError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    await context.abort_with_status(to_status(error))
