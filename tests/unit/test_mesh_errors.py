"""Errors across a real gRPC hop: what a handler raises, the rich status the shared interceptor
answers with (google.rpc.Status + ErrorInfo), what the caller reads back with from_rpc_error,
and the OpenAI error the gateway makes of it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc.error_details_pb2 import ErrorInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from services.common.errors import InvalidArgumentError, MeshError, from_rpc_error
from services.common.server import ServiceSpec, running_server
from services.common.settings import ServiceSettings
from services.gateway.errors import APIError
from tests.unit.helpers import free_port

SERVICE = "llmmesh.test.v1.FailingServiceForTest"


class FailingServicerForTest:
    """Test double: every method fails in its own way."""

    async def BadParam(self, request: bytes, context: Any) -> bytes:
        raise InvalidArgumentError("max_tokens must be at most 4096", "max_tokens", "max_tokens_too_large")

    async def UnknownModel(self, request: bytes, context: Any) -> bytes:
        raise MeshError(grpc.StatusCode.NOT_FOUND, "The model `x` does not exist.", "model_not_found")

    async def Bug(self, request: bytes, context: Any) -> bytes:
        raise ValueError("invalid literal for int() with base 10: '/srv/secret'")

    async def PlainAbort(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        raise AssertionError("abort returned")

    async def ForeignDetails(self, request: bytes, context: Any) -> bytes:
        packed = any_pb2.Any()
        packed.Pack(ErrorInfo(reason="API_DISABLED", domain="googleapis.com", metadata={"param": "service"}))
        status = Status(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message="disabled", details=[packed])
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort returned")

    async def StreamThenBadParam(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        raise InvalidArgumentError("stop must hold at most 4 sequences", "stop")

    def generic_handler(self) -> Any:
        unary = {
            name: grpc.unary_unary_rpc_method_handler(getattr(self, name))
            for name in ("BadParam", "UnknownModel", "Bug", "PlainAbort", "ForeignDetails")
        }
        stream = {"StreamThenBadParam": grpc.unary_stream_rpc_method_handler(self.StreamThenBadParam)}
        return grpc.method_handlers_generic_handler(SERVICE, {**unary, **stream})


@pytest.fixture(scope="module")
async def channel() -> AsyncIterator[Any]:
    servicer = FailingServicerForTest()

    def register(server: Any) -> None:
        server.add_generic_rpc_handlers((servicer.generic_handler(),))

    spec = ServiceSpec(name="failing", grpc_services=[SERVICE], register=register)
    settings = ServiceSettings(host="127.0.0.1", grpc_port=free_port(), shutdown_grace_s=0.5)
    async with running_server(spec, settings):
        channel = grpc.aio.insecure_channel(settings.grpc_address)
        try:
            await channel.channel_ready()
            yield channel
        finally:
            await channel.close()


async def _failure(channel: Any, method: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/{method}")(b"")
    return caught.value


async def test_reason_and_param_survive_the_hop(channel: Any) -> None:
    exc = await _failure(channel, "BadParam")

    error = from_rpc_error(exc)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be at most 4096")
    assert (error.reason, error.param) == ("max_tokens_too_large", "max_tokens")


async def test_the_status_is_the_standard_rich_one(channel: Any) -> None:
    exc = await _failure(channel, "BadParam")

    status = rpc_status.from_call(exc)
    assert status is not None
    info = ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.domain, info.reason) == ("llmmesh", "max_tokens_too_large")
    assert dict(info.metadata) == {"param": "max_tokens"}


async def test_the_gateway_names_the_param_the_service_named(channel: Any) -> None:
    error = APIError.from_rpc(await _failure(channel, "BadParam"))

    assert error.body() == {
        "error": {
            "message": "max_tokens must be at most 4096",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "max_tokens_too_large",
        }
    }


async def test_a_reason_without_param_falls_back_to_the_gateways_guess(channel: Any) -> None:
    error = APIError.from_rpc(await _failure(channel, "UnknownModel"))

    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")


async def test_a_stream_fails_with_the_rich_status_too(channel: Any) -> None:
    call = channel.unary_stream(f"/{SERVICE}/StreamThenBadParam")(b"")

    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    error = from_rpc_error(caught.value)
    assert (error.code, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "stop")


async def test_a_bug_value_error_is_internal_and_tells_nothing(channel: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="services.common.interceptors"):
        exc = await _failure(channel, "Bug")

    error = from_rpc_error(exc)
    assert (error.code, error.message, error.reason, error.param) == (
        grpc.StatusCode.INTERNAL,
        "internal error",
        "",
        None,
    )
    assert "secret" not in repr(exc.trailing_metadata())
    logged = [r for r in caplog.records if r.exc_info]
    assert logged
    assert isinstance(logged[-1].exc_info[1], ValueError)  # type: ignore[index]
    assert APIError.from_mesh(error).status == 500


async def test_a_plain_status_without_details_still_maps(channel: Any) -> None:
    error = from_rpc_error(await _failure(channel, "PlainAbort"))

    assert (error.code, error.message, error.reason, error.param) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "not for you",
        "",
        None,
    )


async def test_error_info_of_another_domain_is_not_read_as_ours(channel: Any) -> None:
    error = from_rpc_error(await _failure(channel, "ForeignDetails"))

    assert (error.code, error.message, error.reason, error.param) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "disabled",
        "",
        None,
    )


async def test_a_dead_peer_is_unavailable_without_reason() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as dead:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await dead.unary_unary(f"/{SERVICE}/BadParam")(b"", timeout=5)

    error = from_rpc_error(caught.value)
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.UNAVAILABLE, "", None)
    assert APIError.from_mesh(error).status == 503
