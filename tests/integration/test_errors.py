"""Bad input gets OpenAI-shaped errors, through Envoy."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def test_malformed_json_is_a_400(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.base_url}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={**stack.auth, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert _error(response)["type"] == "invalid_request_error"


def test_missing_messages_is_a_400_naming_the_param(stack: Stack) -> None:
    # The SDK refuses to send this itself, so it goes over plain HTTP.
    response = httpx.post(headers=stack.auth, url=f"{stack.base_url}/chat/completions", json={"model": MODEL})
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "messages"
    assert error["type"] == "invalid_request_error"


def test_empty_messages_is_a_400(stack: Stack) -> None:
    response = httpx.post(
        headers=stack.auth, url=f"{stack.base_url}/chat/completions", json={"model": MODEL, "messages": []}
    )
    assert response.status_code == 400
    assert _error(response)["param"] == "messages"


def test_out_of_range_temperature_is_a_400(stack: Stack) -> None:
    response = httpx.post(
        headers=stack.auth,
        url=f"{stack.base_url}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 7},
    )
    assert response.status_code == 400
    assert _error(response)["param"] == "temperature"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_a_404(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert body["param"] == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context_is_a_400(client: openai.OpenAI, stream: bool) -> None:
    too_long = "hello " * 9000  # SmolLM2's context is 8192 tokens
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": too_long}],
            stream=stream,
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded"
    assert "8192" in body["message"]


def test_prompt_plus_max_tokens_over_the_context_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8192,
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded"


def test_unknown_route_is_an_openai_shaped_404(stack: Stack) -> None:
    response = httpx.get(f"{stack.base_url}/no-such-endpoint", headers=stack.auth)
    assert response.status_code == 404
    assert _error(response)["type"] == "invalid_request_error"


def test_an_oversized_body_is_413_at_envoy_in_openai_shape(stack: Stack) -> None:
    body = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (10 * 1024 * 1024) + b'"}]}'
    response = httpx.post(
        f"{stack.base_url}/chat/completions",
        content=body,
        headers={**stack.auth, "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    error = _error(response)
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"


def test_an_invalid_json_schema_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
        )
    assert caught.value.param == "response_format.json_schema.schema"
