"""API keys through Envoy with the official SDK: no key, a wrong key and a revoked key are
refused; two tenants never see each other's sessions or memories."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from services.common.keys import KeyStore
from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration


def _redis_url(stack: Stack) -> str:
    return f"redis://{stack.settings.host}:{stack.settings.port('redis')}/0"


def _create_key(stack: Stack, tenant: str) -> tuple[str, str]:
    async def create() -> tuple[str, str]:
        keys = KeyStore.from_url(_redis_url(stack))
        try:
            key, info = await keys.create(tenant, "integration test")
            return key, info.id
        finally:
            await keys.close()

    return asyncio.run(create())


def _revoke(stack: Stack, key_id: str) -> bool:
    async def revoke() -> bool:
        keys = KeyStore.from_url(_redis_url(stack))
        try:
            return await keys.revoke(key_id)
        finally:
            await keys.close()

    return asyncio.run(revoke())


@pytest.fixture(scope="module")
def tenant_b(stack: Stack) -> Iterator[str]:
    key, key_id = _create_key(stack, f"tenant-b-{uuid.uuid4().hex[:6]}")
    yield key
    _revoke(stack, key_id)


@pytest.mark.parametrize("api_key", ["", "llm-wrong-key"])
def test_without_a_valid_key_the_sdk_gets_authentication_error(stack: Stack, api_key: str) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=api_key or "unset", max_retries=0)
    if not api_key:
        client = client.with_options(default_headers={"Authorization": ""})
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"


def test_a_revoked_key_is_refused_at_once(stack: Stack) -> None:
    key, key_id = _create_key(stack, "short-lived")
    client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)
    assert client.models.list().data

    assert _revoke(stack, key_id) is True

    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_tenants_cannot_read_list_search_or_delete_each_others_data(stack: Stack, tenant_b: str) -> None:
    a = httpx.Client(base_url=stack.base_url, headers=stack.auth, timeout=120)
    b = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {tenant_b}"}, timeout=120)
    session = a.post("/sessions", json={}).json()["id"]
    fact = "Tenant A keeps its spare key under the blue flowerpot."
    chat = {"model": MODEL, "messages": [{"role": "user", "content": fact}], "max_tokens": 2, "session_id": session}
    assert a.post("/chat/completions", json=chat).status_code == 200
    for _ in range(180):  # indexed off the request path
        if any(m["text"] == fact for m in a.get("/memories", params={"session_id": session}).json()["data"]):
            break
        time.sleep(0.5)
    memory_id = next(m["id"] for m in a.get("/memories", params={"session_id": session}).json()["data"])

    assert b.get(f"/sessions/{session}").status_code == 404
    assert session not in [s["id"] for s in b.get("/sessions", params={"limit": 100}).json()["data"]]
    assert b.get("/memories", params={"session_id": session}).json()["data"] == []
    searched = b.post("/memories/search", json={"query": "where is the spare key?"}).json()["data"]
    assert fact not in [m["text"] for m in searched]
    assert b.delete(f"/memories/{memory_id}").status_code == 404
    assert b.delete(f"/sessions/{session}").status_code == 404
    # Tenant A's data is untouched.
    assert a.get(f"/sessions/{session}").json()["turns"] == 1
    assert a.delete(f"/sessions/{session}").status_code == 200
