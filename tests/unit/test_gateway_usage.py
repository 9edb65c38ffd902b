"""GET /v1/usage through the in-process mesh: the figures are what the responses reported, per
UTC day and model; a caller reads its own key's or its own tenant's usage, nobody else's."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from services.gateway.keys import KeyStore
from tests.unit.mesh import MODEL, Mesh

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def make_key(valkey_url: str, tenant: str) -> str:
    keys = KeyStore.from_url(valkey_url)
    try:
        key, _ = await keys.create(tenant, "usage test")
        return key
    finally:
        await keys.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def usage(mesh: Mesh, key: str, **params: Any) -> dict[str, Any]:
    response = await mesh.http.get("/v1/usage", params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def chat(mesh: Mesh, key: str, max_tokens: int = 2) -> httpx.Response:
    body = {"model": MODEL, "messages": HI, "max_tokens": max_tokens}
    response = await mesh.http.post("/v1/chat/completions", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    return response


async def test_usage_is_what_the_responses_reported(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    key = await make_key(valkey_url, tenant)
    client = openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=key, max_retries=0)
    reported = []
    reply = await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
    reported.append(reply.usage)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    reported += [chunk.usage async for chunk in stream if chunk.usage is not None]
    with pytest.raises(openai.NotFoundError):  # refused: not counted
        await client.chat.completions.create(model="no-such-model", messages=HI, max_tokens=1)

    body = await usage(mesh, key)

    assert len(reported) == 2
    prompt = sum(u.prompt_tokens for u in reported if u is not None)
    completion = sum(u.completion_tokens for u in reported if u is not None)
    assert completion == 8
    today = dt.datetime.now(dt.UTC).date()
    assert body["object"] == "list"
    assert body["scope"] == "key"
    assert body["tenant"] == tenant
    assert body["key_id"].startswith("key_")
    assert body["end_date"] == today.isoformat()
    assert [b["date"] for b in body["data"]] == [(today - dt.timedelta(days=6 - i)).isoformat() for i in range(7)]
    *earlier, last = body["data"]
    assert all(b["results"] == [] for b in earlier)
    assert last["end_time"] - last["start_time"] == 86400
    assert last["results"] == [
        {
            "object": "usage.result",
            "model": MODEL,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "requests": 2,
        }
    ]
    assert body["totals"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "requests": 2,
    }


async def test_embeddings_count_their_input_tokens(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    key = await make_key(valkey_url, tenant)
    body = {"model": "all-minilm-l6-v2", "input": ["one sentence", "and another one"]}
    response = await mesh.http.post("/v1/embeddings", json=body, headers=auth(key))
    assert response.status_code == 200

    (result,) = (await usage(mesh, key, days=1))["data"][0]["results"]
    assert result["model"] == "all-minilm-l6-v2"
    assert result["prompt_tokens"] == response.json()["usage"]["prompt_tokens"] > 0
    assert (result["completion_tokens"], result["requests"]) == (0, 1)


async def test_a_caller_reads_its_own_key_or_tenant_only(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    first, second = await make_key(valkey_url, tenant), await make_key(valkey_url, tenant)
    stranger = await make_key(valkey_url, tenant + "-other")
    await chat(mesh, first)
    for _ in range(2):
        await chat(mesh, second)
    await chat(mesh, stranger)

    assert (await usage(mesh, first))["totals"]["requests"] == 1
    assert (await usage(mesh, second))["totals"]["requests"] == 2
    for key in (first, second):
        whole = await usage(mesh, key, scope="tenant")
        assert (whole["tenant"], whole["key_id"]) == (tenant, None)
        assert whole["totals"]["requests"] == 3
    assert (await usage(mesh, stranger, scope="tenant"))["totals"]["requests"] == 1
    assert (await usage(mesh, stranger))["totals"]["requests"] == 1


async def test_date_ranges(mesh: Mesh, valkey_url: str, tenant: str) -> None:
    key = await make_key(valkey_url, tenant)
    await chat(mesh, key)
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)

    one_day = await usage(mesh, key, start_date=today.isoformat(), end_date=today.isoformat())
    assert [b["date"] for b in one_day["data"]] == [today.isoformat()]
    assert one_day["totals"]["requests"] == 1
    before = await usage(mesh, key, end_date=yesterday.isoformat(), days=2)
    assert [b["date"] for b in before["data"]] == [
        (yesterday - dt.timedelta(days=1)).isoformat(),
        yesterday.isoformat(),
    ]
    assert before["totals"]["requests"] == 0


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start_date": "2025-02-02", "end_date": "2025-02-01"}, "start_date"),
        ({"start_date": "2025-02-01", "days": 2}, "days"),
        ({"days": 0}, "days"),
        ({"start_date": "2020-01-01", "end_date": "2025-01-01"}, "start_date"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"scope": "everyone"}, "scope"),
    ],
)
async def test_bad_queries_are_400_naming_the_param(mesh: Mesh, params: dict[str, Any], param: str) -> None:
    response = await mesh.http.get("/v1/usage", params=params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
