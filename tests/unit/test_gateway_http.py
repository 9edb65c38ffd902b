"""The REST app's own behaviour that needs no upstream: request ids, error shapes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from services.common.keys import KeyStore, connect
from services.gateway.auth import Authenticator
from services.gateway.clients import MeshClients
from services.gateway.http_api import create_app
from services.gateway.limits import Limiter
from services.gateway.pipeline import ChatPipeline
from services.gateway.settings import GatewaySettings


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # No upstream is reached by these routes, so no pipeline is needed.
    # Channels and Redis connect lazily: nothing is dialled unless a route calls an upstream.
    # gRPC's channels want an event loop at hand: one of their own, whatever earlier tests left.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    settings = GatewaySettings(require_api_key=False)
    shared = connect(settings.redis_url)
    auth = Authenticator(settings, KeyStore(shared))
    limiter = Limiter(settings, shared)
    yield TestClient(create_app(settings, cast(ChatPipeline, None), MeshClients.connect(settings), auth, limiter))
    asyncio.set_event_loop(None)
    loop.close()


def test_incoming_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"x-request-id": "abc-123"})

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"


def test_a_request_id_is_made_when_none_comes(client: TestClient) -> None:
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]

    assert len(first) == 32
    assert first != second


def test_unknown_route_has_openai_error_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")

    assert response.status_code == 404
    body: dict[str, Any] = response.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "x-request-id" in response.headers


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2**31}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ],
)
def test_invalid_bodies_are_400_naming_the_param(client: TestClient, body: dict[str, Any], param: str) -> None:
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def small_client() -> TestClient:
    settings = GatewaySettings(require_api_key=False, max_body_bytes=2048)
    shared = connect(settings.redis_url)
    auth = Authenticator(settings, KeyStore(shared))
    limiter = Limiter(settings, shared)
    return TestClient(create_app(settings, cast(ChatPipeline, None), MeshClients.connect(settings), auth, limiter))


def test_a_body_over_the_limit_is_413_in_openai_shape(small_client: TestClient) -> None:
    response = small_client.post("/v1/chat/completions", content=b"x" * 4096, headers={"x-request-id": "big-1"})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.headers["x-request-id"] == "big-1"


def test_a_chunked_body_is_cut_off_at_the_limit(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"y" * 1024

    response = small_client.post("/v1/chat/completions", content=chunks())

    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_body_under_the_limit_goes_on_to_validation(small_client: TestClient) -> None:
    response = small_client.post("/v1/chat/completions", json={"model": "m"})

    assert response.status_code == 400


async def test_the_openapi_document_declares_the_errors_as_answered(mesh: Any) -> None:
    doc = (await mesh.http.get("/openapi.json")).json()

    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/usage"} <= set(doc["paths"])
    for path, method, op in operations:
        assert "422" not in op["responses"], (path, method)  # a bad request is a 400 here
        for status in ("400", "401", "500", "503"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            shape = "AnthropicErrorResponse" if path.startswith("/v1/messages") else "ErrorResponse"
            assert schema == {"$ref": f"#/components/schemas/{shape}"}, (path, method, status)
    assert set(doc["components"]["schemas"]["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}
    assert doc["security"] == [{"bearer": []}, {"x-api-key": []}, {"api-key": []}]
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"403", "404", "413", "429"} <= set(chat)
    assert "text/event-stream" in chat["200"]["content"]


async def test_a_validation_error_names_the_param_wherever_it_came_from(mesh: Any) -> None:
    body_field = await mesh.http.post("/v1/memories/search", json={"query": 5})
    header = await mesh.http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Session-Id": "bad id!"},
    )

    assert body_field.status_code == 400
    assert body_field.json()["error"]["param"] == "query"
    assert header.status_code == 400
    assert header.json()["error"]["param"] == "X-Session-Id"


def _app_client(**settings: Any) -> TestClient:
    config = GatewaySettings(**settings)
    shared = connect(config.redis_url)
    auth = Authenticator(config, KeyStore(shared))
    limiter = Limiter(config, shared)
    return TestClient(create_app(config, cast(ChatPipeline, None), MeshClients.connect(config), auth, limiter))


def test_cors_is_off_unless_origins_are_set(client: TestClient) -> None:
    response = client.get("/healthz", headers={"Origin": "https://app.example.com"})

    assert "access-control-allow-origin" not in response.headers


def test_cors_for_the_configured_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMMESH_GATEWAY_CORS_ORIGINS", "https://app.example.com, https://other.example.com")
    app = _app_client()
    preflight = app.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, x-api-key, content-type, x-stainless-os",
        },
    )
    refused = app.get("/v1/models", headers={"Origin": "https://app.example.com"})  # no key: a 401
    stranger = app.options(
        "/v1/models", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}
    )

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"authorization", "x-api-key", "content-type"} <= {h.strip() for h in allowed.split(",")}
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://app.example.com"
    exposed = refused.headers["access-control-expose-headers"].lower()
    assert all(h in exposed for h in ("x-request-id", "x-session-id", "x-ratelimit-remaining-tokens"))
    assert "access-control-allow-origin" not in stranger.headers
