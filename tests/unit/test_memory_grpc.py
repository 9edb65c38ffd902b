"""MemoryService over real gRPC: the shared server bootstrap (interceptor, health, reflection),
the memory servicer and a real Redis-protocol server behind it."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmesh.common.v1 import chat_pb2
from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.channels import insecure_channel
from services.common.context import REQUEST_ID_HEADER, call_metadata, request_id_var
from services.common.errors import from_rpc_error
from services.common.server import ServiceSpec, running_server
from services.common.settings import ServiceSettings
from services.memory.core import MemoryCore, RecallPolicy, dependency_unavailable
from services.memory.embedding import EmbeddingUnavailableError
from services.memory.server import SERVICE_NAME
from services.memory.servicer import MemoryServicer
from services.memory.store import SessionStore
from services.memory.vectors import EdgeVectorStore
from tests.unit.helpers import free_port

TEST_SERVICE = "llmmesh.test.v1.EchoRequestIdServicerForTest"


class EchoRequestIdServicerForTest:
    """Test double: a raw-bytes service whose handlers report what the interceptor gave them."""

    async def Echo(self, request: bytes, context: Any) -> bytes:
        return request_id_var.get().encode()

    async def EchoStream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield request_id_var.get().encode()

    def generic_handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            TEST_SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.Echo),
                "EchoStream": grpc.unary_stream_rpc_method_handler(self.EchoStream),
            },
        )


@dataclass
class MemoryServer:
    target: str
    channel: Any  # grpc.aio.Channel

    @property
    def memory(self) -> memory_pb2_grpc.MemoryServiceStub:
        return memory_pb2_grpc.MemoryServiceStub(self.channel)

    def raw_method(self, name: str) -> Any:
        return self.channel.unary_unary(f"/{TEST_SERVICE}/{name}")


class NoEmbeddingsForTest:
    """Test double: recall is off in this module, so nothing may ask for an embedding."""

    async def embed(self, texts: Any) -> list[list[float]]:
        raise EmbeddingUnavailableError("no embedding model in this test")


@pytest.fixture(scope="module")
async def memory_server(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MemoryServer]:
    store = SessionStore.from_url(valkey_url, 600, 200)
    vectors = EdgeVectorStore(tmp_path_factory.mktemp("qdrant") / "shard")
    core = MemoryCore(store, vectors, NoEmbeddingsForTest(), window_turns=20, recall=RecallPolicy(top_k=0))
    servicer = MemoryServicer(core)
    echo = EchoRequestIdServicerForTest()

    def register(server: Any) -> None:
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server)
        server.add_generic_rpc_handlers((echo.generic_handler(),))

    spec = ServiceSpec(
        name="memory", grpc_services=[SERVICE_NAME], register=register, translate_error=dependency_unavailable
    )
    settings = ServiceSettings(host="127.0.0.1", grpc_port=free_port(), shutdown_grace_s=0.5)
    try:
        async with running_server(spec, settings):
            channel = grpc.aio.insecure_channel(settings.grpc_address)
            try:
                await channel.channel_ready()
                yield MemoryServer(settings.grpc_address, channel)
            finally:
                await channel.close()
    finally:
        await vectors.close()
        await store.close()


def session() -> str:
    return f"session-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- health


@pytest.mark.parametrize("service", [SERVICE_NAME, ""])
async def test_health_is_serving(memory_server: MemoryServer, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(memory_server.channel)

    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_service_name_is_the_proto_full_name() -> None:
    assert SERVICE_NAME == "llmmesh.memory.v1.MemoryService"


async def test_health_of_an_unknown_service_is_not_found(memory_server: MemoryServer) -> None:
    stub = health_pb2_grpc.HealthStub(memory_server.channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="llmmesh.nope.v1.Nope"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- memory RPCs


async def test_append_get_delete_round_trip(memory_server: MemoryServer) -> None:
    sid = session()
    messages = [
        chat_pb2.ChatMessage(role="user", content="hi", name="bob"),
        chat_pb2.ChatMessage(role="assistant", content="", tool_calls_json='[{"id": "c1"}]'),
        chat_pb2.ChatMessage(role="tool", content="42", tool_call_id="c1"),
    ]
    stub = memory_server.memory

    appended = await stub.Append(
        memory_pb2.AppendRequest(tenant="t", session_id=sid, turn_id="turn-1", messages=messages)
    )
    context = await stub.GetContext(memory_pb2.GetContextRequest(tenant="t", session_id=sid))
    deleted = await stub.DeleteSession(memory_pb2.DeleteSessionRequest(tenant="t", session_id=sid))
    after = await stub.GetContext(memory_pb2.GetContextRequest(tenant="t", session_id=sid))

    assert (appended.appended, appended.stored_turns, appended.seq) == (True, 1, 1)
    assert [list(t.messages) for t in context.window] == [messages]
    assert context.session.id == sid
    assert deleted.deleted is True
    assert list(after.window) == []


async def test_retried_append_reports_appended_false(memory_server: MemoryServer) -> None:
    sid = session()
    request = memory_pb2.AppendRequest(
        tenant="t", session_id=sid, turn_id="turn-1", messages=[chat_pb2.ChatMessage(role="user", content="hi")]
    )

    first = await memory_server.memory.Append(request)
    retry = await memory_server.memory.Append(request)

    assert (first.appended, first.stored_turns, first.seq) == (True, 1, 1)
    assert (retry.appended, retry.stored_turns, retry.seq) == (False, 1, 1)


async def test_delete_of_unknown_session_reports_false(memory_server: MemoryServer) -> None:
    reply = await memory_server.memory.DeleteSession(memory_pb2.DeleteSessionRequest(tenant="t", session_id=session()))

    assert reply.deleted is False


Call = Callable[[memory_pb2_grpc.MemoryServiceStub, str, str], Any]

CALLS: dict[str, Call] = {
    "GetContext": lambda stub, tenant, sid: stub.GetContext(
        memory_pb2.GetContextRequest(tenant=tenant, session_id=sid)
    ),
    "Append": lambda stub, tenant, sid: stub.Append(
        memory_pb2.AppendRequest(tenant=tenant, session_id=sid, turn_id="turn-1")
    ),
    "DeleteSession": lambda stub, tenant, sid: stub.DeleteSession(
        memory_pb2.DeleteSessionRequest(tenant=tenant, session_id=sid)
    ),
}


@pytest.mark.parametrize("rpc", sorted(CALLS))
@pytest.mark.parametrize(("tenant_name", "sid"), [("", "s1"), ("t", ""), ("", "")])
async def test_missing_tenant_or_session_is_invalid_argument(
    memory_server: MemoryServer, rpc: str, tenant_name: str, sid: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await CALLS[rpc](memory_server.memory, tenant_name, sid)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "tenant and session_id are required"


async def test_missing_turn_id_is_invalid_argument(memory_server: MemoryServer) -> None:
    request = memory_pb2.AppendRequest(
        tenant="t", session_id=session(), messages=[chat_pb2.ChatMessage(role="user", content="hi")]
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory_server.memory.Append(request)

    error = from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "turn_id is required"


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (memory_pb2.ListMemoriesRequest(tenant="t", session_id="s", after="no-such-memory"), "after"),
        (memory_pb2.ListMemoriesRequest(tenant="t", session_id="s", limit=101), "limit"),
    ],
)
async def test_a_bad_listing_names_its_param(
    memory_server: MemoryServer, request_: memory_pb2.ListMemoriesRequest, param: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory_server.memory.ListMemories(request_)

    error = from_rpc_error(caught.value)
    assert (error.code, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, param)


# ---------------------------------------------------------------- interceptor


async def test_request_id_from_metadata_reaches_the_handler(memory_server: MemoryServer) -> None:
    reply = await memory_server.raw_method("Echo")(b"", metadata=((REQUEST_ID_HEADER, "req-from-client-1"),))

    assert reply == b"req-from-client-1"


async def test_request_id_reaches_a_streaming_handler(memory_server: MemoryServer) -> None:
    call = memory_server.channel.unary_stream(f"/{TEST_SERVICE}/EchoStream")(
        b"", metadata=((REQUEST_ID_HEADER, "req-stream-7"),)
    )

    assert [reply async for reply in call] == [b"req-stream-7", b"req-stream-7"]


async def test_missing_request_id_gets_a_fresh_one_per_call(memory_server: MemoryServer) -> None:
    echo = memory_server.raw_method("Echo")

    first = (await echo(b"", metadata=((REQUEST_ID_HEADER, "req-earlier"),))).decode()
    second = (await echo(b"")).decode()
    third = (await echo(b"")).decode()

    assert first == "req-earlier"
    assert re.fullmatch(r"[0-9a-f]{32}", second)
    assert re.fullmatch(r"[0-9a-f]{32}", third)
    assert second != third


async def test_call_metadata_propagates_the_current_request_id(memory_server: MemoryServer) -> None:
    channel = insecure_channel(memory_server.target)
    token = request_id_var.set("req-propagated-42")
    try:
        reply = await channel.unary_unary(f"/{TEST_SERVICE}/Echo")(b"", metadata=call_metadata())
    finally:
        request_id_var.reset(token)
        await channel.close()

    assert reply == b"req-propagated-42"
