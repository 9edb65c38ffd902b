"""The conventions OpenAI clients rely on, through the in-process mesh: request and response
ids, the auth headers, cached tokens in usage, the model list, rate-limit headers, CORS."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from services.common.keys import KeyLimits, KeyStore
from services.inference.instant import PrefixCache
from tests.unit.mesh import API_KEY, MODEL, Mesh, MeshOptions

# -- request ids and response ids


async def test_response_ids_are_the_servers_own_and_unique(mesh: Mesh) -> None:
    headers = {"x-request-id": "fixed-1"}
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    first = await mesh.http.post("/v1/chat/completions", json=payload, headers=headers)
    second = await mesh.http.post("/v1/chat/completions", json=payload, headers=headers)
    completion = await mesh.http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}, headers=headers
    )

    assert first.status_code == second.status_code == completion.status_code == 200
    # The request id is the client's (logs, tracing); the response ids are not.
    assert first.headers["x-request-id"] == "fixed-1"
    ids = [first.json()["id"], second.json()["id"], completion.json()["id"]]
    assert len(set(ids)) == 3
    assert all("fixed-1" not in id_ for id_ in ids)
    assert ids[0].startswith("chatcmpl-")
    assert ids[2].startswith("cmpl-")


@pytest.mark.parametrize(
    "incoming",
    ["x" * 5000, "caf\u00e9-1".encode().decode("latin-1"), "has space", "semi;colon", ""],
    ids=["too-long", "non-ascii", "space", "semicolon", "empty"],
)
async def test_an_unsafe_request_id_is_replaced_not_a_500(mesh: Mesh, incoming: str) -> None:
    response = await mesh.http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        headers=[(b"x-request-id", incoming.encode("latin-1"))],
    )

    assert response.status_code == 200
    replaced = response.headers["x-request-id"]
    assert replaced != incoming
    assert len(replaced) == 32
    assert replaced.isalnum()
    assert len(response.json()["id"]) < 64


async def test_a_safe_request_id_is_kept(mesh: Mesh) -> None:
    incoming = "trace:Ab-9_x." + "z" * 100
    response = await mesh.http.get("/healthz", headers={"x-request-id": incoming})

    assert response.headers["x-request-id"] == incoming


# -- the auth headers


@pytest.mark.parametrize("header", ["x-api-key", "api-key"])
async def test_the_key_may_come_in_x_api_key_or_api_key(mesh: Mesh, header: str) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    good = {"Authorization": "", header: API_KEY}
    wrong = {"Authorization": "", header: "llm-not-a-key"}

    assert (await mesh.http.get("/v1/models", headers=good)).status_code == 200
    assert (await mesh.http.post("/v1/chat/completions", json=chat, headers=good)).status_code == 200
    refused = await mesh.http.get("/v1/models", headers=wrong)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_a_bearer_key_comes_first(mesh: Mesh) -> None:
    response = await mesh.http.get("/v1/models", headers={"x-api-key": "llm-not-a-key"})

    assert response.status_code == 200  # the client's default Authorization: Bearer API_KEY


# -- cached tokens

LONG = "Tell me about the history of the city of Lyon, its silk weavers and its two rivers. " * 4


def _cached(usage: dict[str, Any]) -> int:
    return int(usage["prompt_tokens_details"]["cached_tokens"])


async def test_a_repeated_prompt_reports_cached_tokens(mesh: Mesh) -> None:
    first = (await mesh.chat(LONG + "first")).json()["usage"]
    second = (await mesh.chat(LONG + "first")).json()["usage"]
    other = (await mesh.chat("Something else entirely, " + LONG)).json()["usage"]

    assert _cached(first) == 0
    # Full blocks of 16 tokens, at most all but the last prompt token (as vLLM counts them).
    assert 0 < _cached(second) < second["prompt_tokens"]
    assert _cached(second) % 16 == 0
    assert second["prompt_tokens"] - _cached(second) <= 16
    # Another question shares only what comes before it (the template's and the agent's system prompt).
    assert _cached(other) < 48 < _cached(second)


async def test_cached_tokens_in_the_streamed_usage_and_completions(mesh: Mesh) -> None:
    body = {"stream": True, "stream_options": {"include_usage": True}}
    await mesh.chat(LONG + "streamed")
    streamed = await mesh.chat(LONG + "streamed", **body)
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    prompt = {"model": MODEL, "prompt": [list(range(100, 140))], "max_tokens": 1}
    await mesh.http.post("/v1/completions", json=prompt)
    completion = (await mesh.http.post("/v1/completions", json=prompt)).json()

    assert _cached(chunks[-1]["usage"]) > 0
    assert _cached(completion["usage"]) == 32


def test_the_simulated_prefix_cache_counts_leading_full_blocks() -> None:
    cache = PrefixCache(block_size=4, capacity=3)

    assert cache.lookup_and_store(list(range(10))) == 0
    assert cache.lookup_and_store(list(range(10))) == 8
    assert cache.lookup_and_store([*range(6), 99, 99, 99]) == 4  # the second block differs
    assert cache.lookup_and_store(list(range(8))) == 4  # the last token is always computed
    assert cache.lookup_and_store([7, 7, 7, 7, 7]) == 0
    cache.lookup_and_store([5, 5, 5, 5, 6, 6, 6, 6, 1])
    assert cache.lookup_and_store(list(range(10))) == 0  # its blocks were the least recently used


# -- the model list


async def test_models_carry_a_stable_created_and_their_context_length(mesh: Mesh) -> None:
    before = int(time.time())
    first = (await mesh.http.get("/v1/models")).json()["data"]
    await asyncio.sleep(1.1)
    second = (await mesh.http.get("/v1/models")).json()["data"]
    one = (await mesh.http.get(f"/v1/models/{MODEL}")).json()

    assert first == second  # created is when the model came up, not the time of the call
    assert all(0 < m["created"] <= before for m in first)
    by_id = {m["id"]: m for m in first}
    assert by_id[MODEL]["max_model_len"] == MeshOptions().context_length
    assert by_id["llmmesh"]["max_model_len"] == MeshOptions().context_length  # the model behind it
    assert one == by_id[MODEL]


# -- rate-limit headers


async def test_rate_limit_headers_for_the_limits_a_key_has(mesh: Mesh, valkey_url: str) -> None:
    keys = KeyStore.from_url(valkey_url)
    try:
        limited, _ = await keys.create(f"t-{uuid.uuid4().hex[:8]}", "headers", KeyLimits(rpm=3, tpm=5000))
        rpm_only, _ = await keys.create(f"t-{uuid.uuid4().hex[:8]}", "headers", KeyLimits(rpm=3))
    finally:
        await keys.close()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    auth = {"Authorization": f"Bearer {limited}"}
    first = await mesh.http.post("/v1/chat/completions", json=chat, headers=auth)
    second = await mesh.http.post("/v1/chat/completions", json={**chat, "stream": True}, headers=auth)
    await mesh.http.post("/v1/chat/completions", json=chat, headers=auth)
    refused = await mesh.http.post("/v1/chat/completions", json=chat, headers=auth)
    unlimited = await mesh.chat("hi")
    only_requests = await mesh.http.post(
        "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {rpm_only}"}
    )

    prompt = first.json()["usage"]["prompt_tokens"]
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert 55 <= int(first.headers["x-ratelimit-reset-requests"].removesuffix("s")) <= 60
    assert first.headers["x-ratelimit-limit-tokens"] == "5000"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(5000 - prompt - 10)  # reserved: prompt + max_tokens
    assert first.headers["x-ratelimit-reset-tokens"] == "60s"
    assert second.headers["x-ratelimit-remaining-requests"] == "1"
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "retry-after" in refused.headers
    assert not any(name.startswith("x-ratelimit") for name in unlimited.headers)
    assert "x-ratelimit-limit-requests" in only_requests.headers
    assert "x-ratelimit-limit-tokens" not in only_requests.headers
