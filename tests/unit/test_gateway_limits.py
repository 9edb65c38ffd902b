"""Per-key limits through the in-process mesh with the official SDK: requests per minute, tokens
per minute (a stream stops at the limit, unused reservations come back), requests in flight,
allowed models; every refusal in OpenAI's shape, a 429 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from services.common.errors import MeshError
from services.common.keys import KeyInfo, KeyLimits, KeyStore, connect
from services.gateway.auth import Caller
from services.gateway.errors import RateLimitError
from services.gateway.limits import Limiter
from services.gateway.settings import GatewaySettings
from tests.unit.helpers import free_port
from tests.unit.mesh import MODEL, Mesh, MeshOptions, in_process_mesh

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def make_key(valkey_url: str, tenant: str, **limits: Any) -> str:
    keys = KeyStore.from_url(valkey_url)
    try:
        key, _ = await keys.create(tenant, "limits test", KeyLimits(**limits))
        return key
    finally:
        await keys.close()


def sdk(mesh: Mesh, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=key, max_retries=0)


async def prompt_tokens(mesh: Mesh) -> int:
    """What the prompt "hi" counts (the mesh's own key has no limits)."""
    reply = (await mesh.chat("hi", max_tokens=1)).json()
    count: int = reply["usage"]["prompt_tokens"]
    return count


def assert_rate_limited(refused: openai.APIStatusError, code: str = "rate_limit_exceeded") -> int:
    """The refusal is a 429 in OpenAI's shape; returns its Retry-After."""
    assert refused.status_code == 429
    error = refused.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("rate_limit_error", code)
    retry_after = int(refused.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    return retry_after


async def test_requests_per_minute(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    client = sdk(mesh, await make_key(valkey_url, tenant, rpm=2))
    for _ in range(2):
        await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)

    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)

    assert_rate_limited(refused.value)
    assert "requests per minute (RPM): limit 2" in refused.value.message
    # Another key of the same tenant has its own count.
    other = sdk(mesh, await make_key(valkey_url, tenant, rpm=2))
    assert (await other.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)).choices


async def test_a_stream_without_max_tokens_stops_at_the_token_limit(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    # The instant backend sends 16 tokens without max_tokens; the limit leaves room for 10. How
    # many arrive depends on how the relay groups tokens into pieces: at most the 10.
    prompt = await prompt_tokens(mesh)
    limit = prompt + 10
    client = sdk(mesh, await make_key(valkey_url, tenant, tpm=limit))
    stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    received: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError) as stopped:
        await read()

    completion = "".join(received).count(" tok")
    assert completion <= limit - prompt
    assert stopped.value.code == "rate_limit_exceeded"
    assert f"tokens per minute (TPM): limit {limit}" in stopped.value.message
    assert "stopped at the limit" in stopped.value.message
    # The window is full: the next request is refused before it starts, with Retry-After.
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert_rate_limited(refused.value)
    # What the stream delivered is what was counted.
    usage = (await mesh.http.get("/v1/usage", headers={"Authorization": f"Bearer {client.api_key}"})).json()
    assert usage["totals"]["completion_tokens"] == completion
    assert usage["totals"]["prompt_tokens"] == prompt


async def test_a_response_that_would_pass_the_token_limit_is_429(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    prompt = await prompt_tokens(mesh)
    client = sdk(mesh, await make_key(valkey_url, tenant, tpm=prompt + 10))

    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HI)

    assert_rate_limited(refused.value)
    assert "stopped at the limit" in refused.value.message


async def test_a_request_larger_than_the_token_limit_is_refused_before_it_starts(
    mesh: Mesh, valkey_url: str, tenant: str
) -> None:
    prompt = await prompt_tokens(mesh)
    client = sdk(mesh, await make_key(valkey_url, tenant, tpm=prompt + 5))

    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, stream=True)

    assert refused.value.code == "rate_limit_exceeded"
    assert "Request too large" in refused.value.message
    assert "retry-after" not in refused.value.response.headers  # waiting would not help
    # A request that fits is served.
    assert (await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5)).usage is not None


async def test_what_a_finished_request_did_not_use_is_given_back(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: Any, embedder: Any, tenant: str
) -> None:
    # Without max_tokens a request reserves 100 completion tokens; the instant backend uses 16.
    options = MeshOptions(gateway={"tpm_default_reserve": 100})
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        prompt = await prompt_tokens(mesh)
        # Room for the second request only if the first one's 84 unused tokens came back.
        client = sdk(mesh, await make_key(valkey_url, tenant, tpm=2 * prompt + 120))

        for _ in range(2):
            reply = await client.chat.completions.create(model=MODEL, messages=HI)
            assert reply.usage is not None
            assert reply.usage.completion_tokens == 16


async def wait_for_usage(mesh: Mesh, key: str, requests: int) -> dict[str, Any]:
    """The key's usage once it counts `requests` (a request is counted when it is settled)."""
    for _ in range(500):
        usage: dict[str, Any] = (await mesh.http.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})).json()
        if usage["totals"]["requests"] >= requests:
            return usage
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the key's usage did not reach {requests} requests")


async def open_stream(client: openai.AsyncOpenAI, **body: Any) -> Any:
    """A streamed completion whose first token has arrived (the mesh holds it there)."""
    stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True, **body)
    chunks = aiter(stream)
    while True:
        chunk: ChatCompletionChunk = await anext(chunks)
        if any(c.delta.content for c in chunk.choices):
            return stream


async def test_what_a_request_cut_short_did_not_use_is_given_back(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    prompt = await prompt_tokens(mesh)
    key = await make_key(valkey_url, tenant, tpm=2 * prompt + 15)
    client = sdk(mesh, key)
    mesh.backend.gate.clear()
    try:
        stream = await open_stream(client, max_tokens=10)  # reserves prompt + 10
        await stream.close()  # the client goes away after a token or so
        usage = await wait_for_usage(mesh, key, 1)
    finally:
        mesh.backend.gate.set()

    used = usage["totals"]["completion_tokens"]
    assert 1 <= used < 5
    # prompt + 10 fits again only because the 10 - `used` unused tokens came back.
    reply = await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=10)
    assert reply.usage is not None


async def test_requests_in_flight(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    key = await make_key(valkey_url, tenant, max_streams=2)
    client = sdk(mesh, key)
    mesh.backend.gate.clear()  # streams stay open after their first token
    try:
        first = await open_stream(client, max_tokens=50)
        second = await open_stream(client, max_tokens=50)

        for stream in (True, False):  # a non-streamed request holds a slot as much as a stream
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1, stream=stream)
            assert_rate_limited(refused.value, "concurrency_limit_exceeded")
            assert "at most 2 requests" in refused.value.message

        # A client that goes away frees its slot.
        await first.close()
        third = None
        for _ in range(500):
            with contextlib.suppress(openai.RateLimitError):
                third = await open_stream(client, max_tokens=50)
                break
            await asyncio.sleep(0.02)
        assert third is not None, "the slot of a closed stream was not freed"
    finally:
        mesh.backend.gate.set()

    # Streams that end free theirs: two more fit at once.
    for stream in (second, third):
        async for _ in stream:
            pass
    mesh.backend.gate.clear()
    try:
        held = [await open_stream(client, max_tokens=5) for _ in range(2)]
    finally:
        mesh.backend.gate.set()
    for stream in held:
        await stream.close()


async def test_models_a_key_may_use(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    client = sdk(mesh, await make_key(valkey_url, tenant, models=(MODEL,)))
    assert (await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)).choices

    narrow = sdk(mesh, await make_key(valkey_url, tenant, models=("another-model",)))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await narrow.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)

    assert refused.value.status_code == 403
    error = refused.value.response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("permission_error", "model_not_allowed", "model")
    assert MODEL in error["message"]


async def test_with_redis_unreachable_the_limiter_answers_unavailable() -> None:
    settings = GatewaySettings(default_rpm=10)
    client = connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        with pytest.raises(MeshError) as refused:
            await Limiter(settings, client).admit(Caller("tenant-x"), MODEL)
    finally:
        await client.aclose()

    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "rate_limiter_unavailable"


@pytest.fixture
async def limiter(valkey_url: str) -> AsyncIterator[Limiter]:
    client = connect(valkey_url)
    try:
        yield Limiter(GatewaySettings(tpm_default_reserve=4, tpm_extend_step=3), client)
    finally:
        await client.aclose()


async def test_a_reservation_grows_in_steps_up_to_the_limit_and_no_further(limiter: Limiter, tenant: str) -> None:
    caller = Caller(tenant, KeyInfo(id=f"key_{tenant}", tenant=tenant, limits=KeyLimits(tpm=15)))
    admission = await limiter.admit(caller, MODEL)
    await admission.reserve(5, None)  # the prompt and the default 4
    assert admission.granted == 9

    await admission.allow(4)
    assert admission.granted == 9
    await admission.allow(5)  # one past the reservation: one step more
    assert admission.granted == 12
    await admission.allow(9)  # a piece of several tokens: what it needs, at most what is left
    assert admission.granted == 15
    await admission.allow(10)
    with pytest.raises(RateLimitError) as refused:
        await admission.allow(11)
    assert refused.value.retry_after_s is not None
    assert 1 <= refused.value.retry_after_s <= 60

    # Settled at 5 + 10 the window stays full; a second request of the key finds no room.
    await admission.settle(5, 10)
    second = await limiter.admit(caller, MODEL)
    with pytest.raises(RateLimitError):
        await second.reserve(1, 1)
    await second.settle(0, 0)


async def test_settling_gives_back_the_newest_grants_first(limiter: Limiter, tenant: str) -> None:
    caller = Caller(tenant, KeyInfo(id=f"key_{tenant}", tenant=tenant, limits=KeyLimits(tpm=20)))
    first = await limiter.admit(caller, MODEL)
    await first.reserve(2, 15)
    assert first.granted == 17

    await first.settle(2, 3)  # 12 unused tokens come back

    second = await limiter.admit(caller, MODEL)
    await second.reserve(2, 13)  # 5 + 15 = 20: fits only with the refund
    assert second.granted == 15
    await second.settle(2, 13)
    third = await limiter.admit(caller, MODEL)
    with pytest.raises(RateLimitError):
        await third.reserve(1, None)
    await third.settle(0, 0)
