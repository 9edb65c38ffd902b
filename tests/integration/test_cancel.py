"""Cancelling aborts the request on the vLLM engine: from the REST client closing its
stream, and from an internal gRPC client sending `cancel` on the bidi stream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

LONG_TASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a very long story about a dragon and a knight."}
]


@pytest.fixture(scope="module")
def inference(stack: Stack) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(stack.internal_target("inference")) as channel:  # internal: its own port
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def _busy(stub: inference_pb2_grpc.InferenceServiceStub) -> tuple[int, int]:
    engines = stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=5).engines
    return sum(e.running + e.waiting for e in engines), sum(e.outstanding for e in engines)


def _idle_within(stub: inference_pb2_grpc.InferenceServiceStub, seconds: float) -> float:
    """Seconds until the engine reports no running, waiting or outstanding request."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if _busy(stub) == (0, 0):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"engine still busy {seconds}s after the cancel: {_busy(stub)}")


def test_closing_the_sse_stream_aborts_the_engine_request(
    stack: Stack, inference: inference_pb2_grpc.InferenceServiceStub
) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=LONG_TASK,
        max_tokens=4000,
        temperature=0,
        stream=True,
    )
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 5:
            break
    running, outstanding = _busy(inference)
    assert running >= 1
    assert outstanding >= 1
    stream.close()
    # 4000 tokens at this engine's speed take minutes: idle within a second means aborted.
    _idle_within(inference, 1.0)


def test_client_gone_during_a_non_streaming_request_aborts_it(
    stack: Stack, inference: inference_pb2_grpc.InferenceServiceStub
) -> None:
    body = {"model": MODEL, "messages": LONG_TASK, "max_tokens": 4000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=2.0, headers=stack.auth)
    _idle_within(inference, 1.5)


def test_in_band_cancel_on_the_bidi_stream(inference: inference_pb2_grpc.InferenceServiceStub) -> None:
    start = inference_pb2.GenerateRequest(
        start=inference_pb2.StartGeneration(
            request_id="cancel-test",
            model=MODEL,
            messages=[common_pb2.ChatMessage(role="user", content=str(LONG_TASK[0]["content"]))],
            sampling=common_pb2.SamplingParams(temperature=0, max_tokens=4000),
        )
    )
    outgoing: list[inference_pb2.GenerateRequest] = [start]
    cancel_sent = False

    def requests() -> Iterator[inference_pb2.GenerateRequest]:
        while True:
            if outgoing:
                yield outgoing.pop(0)
            elif cancel_sent:
                return
            else:
                time.sleep(0.01)

    deltas = 0
    end = None
    started = None
    for reply in inference.Generate(requests(), timeout=60):
        kind = reply.WhichOneof("event")
        if kind == "started":
            started = reply.started
        elif kind == "delta":
            deltas += 1
            if deltas == 5 and not cancel_sent:
                outgoing.append(inference_pb2.GenerateRequest(cancel=inference_pb2.CancelGeneration()))
                cancel_sent = True
        elif kind == "end":
            end = reply.end
    assert started is not None
    assert started.prompt_tokens > 0
    assert end is not None
    assert end.cancelled
    assert end.usage.prompt_tokens == started.prompt_tokens
    assert 5 <= end.usage.completion_tokens < 4000
    _idle_within(inference, 1.0)


def test_first_message_must_start_a_generation(inference: inference_pb2_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(inference.Generate(iter([inference_pb2.GenerateRequest(cancel=inference_pb2.CancelGeneration())])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
