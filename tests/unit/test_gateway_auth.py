"""API keys and tenants through the in-process mesh: no key, a wrong key and a revoked key are
401 in OpenAI's shape; each key's tenant sees only its own sessions and memories."""

from __future__ import annotations

import uuid

import pytest

from services.common.keys import KeyStore
from tests.unit.mesh import MODEL, OTHER_KEY, Mesh

B = {"Authorization": f"Bearer {OTHER_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": ""}, {"Authorization": "Bearer llm-not-a-key"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/sessions")]
)
async def test_requests_without_a_valid_key_are_401(
    mesh: Mesh, headers: dict[str, str], method: str, path: str
) -> None:
    response = await mesh.http.request(method, path, headers=headers, json=CHAT if method == "POST" else None)

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert set(error) == {"message", "type", "param", "code"}


async def test_a_revoked_key_is_refused_at_once(mesh: Mesh, valkey_url: str) -> None:
    keys = KeyStore.from_url(valkey_url)
    try:
        key, info = await keys.create("tenant-c", "short-lived")
        headers = {"Authorization": f"Bearer {key}"}
        assert (await mesh.http.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code == 200

        assert await keys.revoke(info.id) is True

        assert (await mesh.http.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code == 401
    finally:
        await keys.close()


async def test_one_tenant_never_sees_another_tenants_sessions_or_memories(mesh: Mesh) -> None:
    sid = f"shared-{uuid.uuid4().hex[:8]}"
    planted = "Tenant A's launch code is amber-seven."
    assert (await mesh.chat(planted, session_id=sid)).status_code == 200
    await mesh.settle()

    assert (await mesh.http.get(f"/v1/sessions/{sid}", headers=B)).status_code == 404
    assert (await mesh.http.patch(f"/v1/sessions/{sid}", json={"system_prompt": "x"}, headers=B)).status_code == 404
    assert (await mesh.http.delete(f"/v1/sessions/{sid}", headers=B)).status_code == 404
    listed = (await mesh.http.get("/v1/sessions", params={"limit": 100}, headers=B)).json()["data"]
    assert sid not in [s["id"] for s in listed]
    searched = await mesh.http.post("/v1/memories/search", json={"query": "launch code"}, headers=B)
    assert planted not in [m["text"] for m in searched.json()["data"]]
    memories = (await mesh.http.get("/v1/memories", params={"session_id": sid})).json()["data"]
    (mine,) = [m for m in memories if m["text"] == planted]
    assert (await mesh.http.delete(f"/v1/memories/{mine['id']}", headers=B)).status_code == 404
    # The same session id under tenant B is another conversation: A's turn is not in its prompt.
    response = await mesh.http.post("/v1/chat/completions", json={**CHAT, "session_id": sid}, headers=B)
    assert response.status_code == 200
    assert {"role": "user", "content": planted} not in mesh.backend.last_prompt
    # ... and tenant A still has everything.
    assert (await mesh.http.get(f"/v1/sessions/{sid}")).json()["turns"] == 1
