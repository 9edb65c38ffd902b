"""gRPC clients: the public ChatService through Envoy; the internal services only on their own ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import grpc
import pytest

from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import MODEL, REPO, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.grpc_target) as channel:
        yield channel


def test_example_client_streams_a_chat_through_envoy(stack: Stack) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "examples/grpc_chat.py", "--target", stack.grpc_target),
            *("--api-key", stack.api_key, "What is the capital of France?"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "finish ['stop']" in result.stderr


def auth(stack: Stack) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.api_key}"),)


def test_chat_service_needs_an_api_key(stack: Stack, channel: grpc.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    request = chat_pb2.StreamChatRequest(model=MODEL, messages=[common_pb2.ChatMessage(role="user", content="hi")])
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.StreamChat(request, timeout=30, metadata=metadata))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_chat_service_streams_started_deltas_finished(stack: Stack, channel: grpc.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    replies = list(
        stub.StreamChat(
            chat_pb2.StreamChatRequest(
                model=MODEL,
                messages=[common_pb2.ChatMessage(role="user", content="What is the capital of France?")],
                sampling=common_pb2.SamplingParams(temperature=0),
            ),
            timeout=60,
            metadata=auth(stack),
        )
    )
    kinds = [r.WhichOneof("event") for r in replies]
    assert kinds[0] == "started"
    assert kinds[-1] == "finished"
    assert set(kinds[1:-1]) == {"delta"}
    assert "Paris" in "".join(r.delta.text for r in replies[1:-1])
    assert replies[-1].finished.finish_reasons == ["stop"]
    assert replies[-1].finished.usage.completion_tokens > 0


def test_chat_service_unknown_model_is_not_found(stack: Stack, channel: grpc.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        list(
            stub.StreamChat(
                chat_pb2.StreamChatRequest(
                    model="no-such-model", messages=[common_pb2.ChatMessage(role="user", content="hi")]
                ),
                timeout=30,
                metadata=auth(stack),
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def internal(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.internal_target("inference")) as channel:
        yield channel


@pytest.mark.parametrize(
    ("service", "call"),
    [
        ("memory", lambda ch: memory_pb2_grpc.MemoryServiceStub(ch).ListSessions(
            memory_pb2.ListSessionsRequest(tenant="default"), timeout=10)),
        ("memory", lambda ch: memory_pb2_grpc.MemoryServiceStub(ch).DeleteSession(
            memory_pb2.DeleteSessionRequest(tenant="default", session_id="anyone"), timeout=10)),
        ("inference", lambda ch: inference_pb2_grpc.InferenceServiceStub(ch).GetLoad(
            inference_pb2.GetLoadRequest(), timeout=10)),
        ("router", lambda ch: router_pb2_grpc.RouterServiceStub(ch).ListModels(
            router_pb2.ListModelsRequest(), timeout=10)),
    ],
)  # fmt: skip
def test_internal_services_are_refused_on_the_public_port(
    stack: Stack, channel: grpc.Channel, service: str, call: Callable[[grpc.Channel], object]
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        call(channel)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # Envoy has no route for it
    # ... while the same call on the service's own (internal) port works.
    with grpc.insecure_channel(stack.internal_target(service)) as inside:
        call(inside)


def test_inference_counts_tokens_with_the_chat_template(internal: grpc.Channel) -> None:
    stub = inference_pb2_grpc.InferenceServiceStub(internal)
    short = stub.CountTokens(
        inference_pb2.CountTokensRequest(model=MODEL, messages=[common_pb2.ChatMessage(role="user", content="Hi")])
    )
    longer = stub.CountTokens(
        inference_pb2.CountTokensRequest(
            model=MODEL, messages=[common_pb2.ChatMessage(role="user", content="Hi there, how are you today?")]
        )
    )
    assert short.context_length == 8192
    # The chat template adds its own tokens around the text (SmolLM2's adds a default system turn).
    assert short.prompt_tokens > 3
    assert longer.prompt_tokens > short.prompt_tokens


def test_inference_lists_its_model_and_engines(internal: grpc.Channel) -> None:
    stub = inference_pb2_grpc.InferenceServiceStub(internal)
    models = stub.ListModels(inference_pb2.ListModelsRequest()).models
    assert [m.id for m in models] == [MODEL]
    assert models[0].engines == 1
    load = stub.GetLoad(inference_pb2.GetLoadRequest()).engines
    assert [e.device for e in load] == ["cpu"]
