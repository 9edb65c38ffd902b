"""GET /v1/usage through the in-process mesh: the figures are what the responses reported, per
UTC day and model; a caller reads its own key's or its own tenant's usage, nobody else's."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import REGISTRY

from services.common.keys import KeyInfo, KeyStore, connect
from services.gateway.auth import Caller
from services.gateway.usage import UsageStore
from tests.unit.conftest import valkey_server
from tests.unit.helpers import free_port
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


class CountedWrites(UsageStore):
    """A usage store that counts its writes to Redis, and can hold each one back for a while
    (a test double around the real store and the real server)."""

    def __init__(self, client: aioredis.Redis, delay_s: float = 0.0) -> None:
        super().__init__(client, retention_days=1)
        self.writes: list[int] = []  # hash fields in each write
        self.delay_s = delay_s

    async def _send(self, batch: Counter[tuple[str, str]]) -> None:
        self.writes.append(len(batch))
        await asyncio.sleep(self.delay_s)
        await super()._send(batch)


def caller_of(tenant: str) -> Caller:
    return Caller(tenant, KeyInfo(id=f"key_{tenant}", tenant=tenant))


async def day_of(redis_client: aioredis.Redis, scope: str, owner: str) -> dict[str, str]:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    found: dict[str, str] = await redis_client.hgetall(f"llmmesh:usage:{scope}:{owner}:{today}")  # type: ignore[assignment]
    return found


async def test_records_counted_while_a_write_runs_share_the_next_one(
    valkey_url: str, redis_client: aioredis.Redis, tenant: str
) -> None:
    client = connect(valkey_url)
    store = CountedWrites(client, delay_s=0.2)
    caller = caller_of(tenant)
    try:
        store.record(caller, MODEL, 10, 1)  # written on its own, at once
        await asyncio.sleep(0.05)  # that write is under way
        for n in range(20):
            store.record(caller, MODEL, 10, n)
        assert store.pending == 21
        assert await store.written(5.0)
    finally:
        await client.aclose()

    assert store.pending == 0
    # 6 fields a request (3 figures, for the tenant and for the key): the first request's,
    # then the 20 that came during its write, together.
    assert store.writes == [6, 6]
    for scope, owner in (("tenant", tenant), ("key", f"key_{tenant}")):
        assert await day_of(redis_client, scope, owner) == {
            f"prompt_tokens:{MODEL}": "210",
            f"completion_tokens:{MODEL}": str(1 + sum(range(20))),
            f"requests:{MODEL}": "21",
        }
    assert 0 < await redis_client.ttl(f"llmmesh:usage:key:key_{tenant}:{dt.datetime.now(dt.UTC).date()}") <= 86400


async def test_records_wait_for_redis_and_are_written_once_it_is_back(tmp_path: Path, tenant: str) -> None:
    port = free_port()
    client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    store = UsageStore(client, retention_days=1)
    try:
        store.record(caller_of(tenant), MODEL, 7, 3)
        store.record(Caller(tenant), MODEL, 1, 1)  # keyless: its tenant only
        assert not await store.written(0.5)  # nothing listens on the port
        assert store.pending == 2
        assert REGISTRY.get_sample_value("llmmesh_gateway_usage_pending_records") == 2

        with valkey_server(tmp_path, port) as url:
            assert await store.written(10.0)
            assert store.pending == 0
            assert REGISTRY.get_sample_value("llmmesh_gateway_usage_pending_records") == 0
            raw = aioredis.Redis.from_url(url, decode_responses=True)
            try:
                assert (await day_of(raw, "tenant", tenant))[f"prompt_tokens:{MODEL}"] == "8"
                assert (await day_of(raw, "key", f"key_{tenant}"))[f"requests:{MODEL}"] == "1"
            finally:
                await raw.aclose()
    finally:
        await client.aclose()


async def test_a_write_the_server_refuses_is_logged_and_the_next_ones_go_on(
    valkey_url: str, redis_client: aioredis.Redis, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    await redis_client.set(f"llmmesh:usage:tenant:{tenant}:{today}", "not a hash")  # WRONGTYPE for HINCRBY
    dropped = REGISTRY.get_sample_value("llmmesh_gateway_usage_writes_total", {"outcome": "dropped"}) or 0.0
    client = connect(valkey_url)
    store = UsageStore(client, retention_days=1)
    try:
        store.record(Caller(tenant), MODEL, 5, 5)
        assert await store.written(5.0)  # given up on, not waited for forever
        store.record(Caller(tenant + "-b"), MODEL, 2, 3)
        assert await store.written(5.0)
    finally:
        await client.aclose()

    assert any(r.message == "usage not written" for r in caplog.records)
    assert REGISTRY.get_sample_value("llmmesh_gateway_usage_writes_total", {"outcome": "dropped"}) == dropped + 1
    assert (await day_of(redis_client, "tenant", tenant + "-b"))[f"completion_tokens:{MODEL}"] == "3"


async def test_a_read_finds_the_replies_before_it_even_when_their_records_are_slow(
    mesh: Mesh, valkey_url: str, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await make_key(valkey_url, tenant)
    real_send = mesh.usage._send

    async def slow_send(batch: Counter[tuple[str, str]]) -> None:
        await asyncio.sleep(0.3)
        await real_send(batch)

    monkeypatch.setattr(mesh.usage, "_send", slow_send)
    for _ in range(3):
        await chat(mesh, key)
    assert mesh.usage.pending > 0  # the replies did not wait for their records

    assert (await usage(mesh, key))["totals"]["requests"] == 3
