"""Per-key limits through Envoy with the official SDK, one test per limit: requests per minute
(REST and the gRPC ChatService), tokens per minute (a stream stops at the limit), requests in
flight, allowed models. Every 429 carries Retry-After; the usage counts what was served."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from llmmesh.common.v1 import chat_pb2 as common_pb2
from services.common.keys import KeyLimits, KeyStore
from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
COUNT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Count from 1 to 100, one number a line."}]


def make_key(stack: Stack, **limits: Any) -> str:
    """A new key of a new tenant with these limits, in the stack's key store."""

    async def create() -> str:
        keys = KeyStore.from_url(f"redis://{stack.settings.host}:{stack.settings.port('redis')}/0")
        try:
            key, _ = await keys.create(f"limits-{uuid.uuid4().hex[:8]}", "integration test", KeyLimits(**limits))
            return key
        finally:
            await keys.close()

    return asyncio.run(create())


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)


def assert_429(refused: openai.APIStatusError, code: str = "rate_limit_exceeded") -> None:
    assert refused.status_code == 429
    assert refused.code == code
    assert 1 <= int(refused.response.headers["retry-after"]) <= 60


def usage(stack: Stack, key: str) -> dict[str, int]:
    response = httpx.get(f"{stack.base_url}/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    totals: dict[str, int] = response.json()["totals"]
    return totals


def test_requests_per_minute(stack: Stack) -> None:
    key = make_key(stack, rpm=1)
    client = sdk(stack, key)
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)

    assert_429(refused.value)
    assert usage(stack, key)["requests"] == 1  # the refused request is not usage


def test_requests_per_minute_on_the_grpc_chat_service(stack: Stack) -> None:
    key = make_key(stack, rpm=1)
    request = chat_pb2.StreamChatRequest(
        model=MODEL,
        messages=[common_pb2.ChatMessage(role="user", content="Hi")],
        sampling=common_pb2.SamplingParams(max_tokens=1),
    )
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        assert list(stub.StreamChat(request, timeout=60, metadata=metadata))[-1].HasField("finished")
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.StreamChat(request, timeout=60, metadata=metadata))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requests per minute" in (refused.value.details() or "")


def test_tokens_per_minute_stop_a_stream_at_the_limit(stack: Stack) -> None:
    prompt = sdk(stack, stack.api_key).chat.completions.create(model=MODEL, messages=COUNT, max_tokens=1).usage
    assert prompt is not None
    key = make_key(stack, tpm=prompt.prompt_tokens + 4)
    client = sdk(stack, key)
    pieces: list[str] = []

    def read() -> None:
        for chunk in client.chat.completions.create(model=MODEL, messages=COUNT, stream=True):
            pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)

    with pytest.raises(openai.APIError) as stopped:
        read()  # the answer is far longer than 4 tokens

    assert stopped.value.code == "rate_limit_exceeded"
    assert "stopped at the limit" in stopped.value.message
    served = usage(stack, key)
    assert served["prompt_tokens"] == prompt.prompt_tokens
    assert len(pieces) <= served["completion_tokens"] <= 4  # each piece is a token or more
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert_429(refused.value)


def test_requests_in_flight(stack: Stack) -> None:
    client = sdk(stack, make_key(stack, max_streams=1))
    # Long enough to still run while the next request comes (closed early: the engine stops).
    stream = client.chat.completions.create(
        model=MODEL, messages=COUNT, stream=True, max_tokens=256, extra_body={"ignore_eos": True}
    )
    try:
        next(chunk for chunk in stream if any(c.delta.content for c in chunk.choices))
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
        assert_429(refused.value, "concurrency_limit_exceeded")
    finally:
        stream.close()

    deadline = time.monotonic() + 30
    while True:  # the slot frees once the gateway sees the client gone
        try:
            assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).choices
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the closed stream's slot was not freed"
            time.sleep(0.1)


def test_a_model_the_key_may_not_use_is_403(stack: Stack) -> None:
    client = sdk(stack, make_key(stack, models=("another-model",)))

    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)

    assert refused.value.code == "model_not_allowed"
    assert refused.value.param == "model"
