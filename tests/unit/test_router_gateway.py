"""The public face of routing, in the in-process mesh (real router, real MiniLM, the instant
backend): /v1/models lists exactly the public names, the agent's persona reaches the model, and
the agent and backend come back in headers while the body stays OpenAI's."""

from __future__ import annotations

import openai
import pytest

from tests.unit.mesh import API_KEY, MODEL, Mesh

CODE = "Please review this Python function, it returns the wrong total."
CHAT_KEYS = {"id", "object", "created", "model", "choices", "usage"}


@pytest.fixture
def sdk(mesh: Mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=API_KEY, max_retries=0)


async def test_models_lists_exactly_the_public_names(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    listed = [m.id async for m in sdk.models.list()]

    assert listed == [
        "llmmesh",
        "llmmesh-general",
        "llmmesh-code-reviewer",
        "llmmesh-sports-coach",
        MODEL,
        "all-minilm-l6-v2",  # for /v1/embeddings
    ]
    assert (await sdk.models.retrieve("llmmesh-code-reviewer")).owned_by == "llmmesh"


async def test_llmmesh_answers_as_the_agent_the_content_calls_for(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model="llmmesh", messages=[{"role": "user", "content": CODE}], max_tokens=4
    )
    reply = raw.parse()

    assert (raw.headers["x-llmmesh-agent"], raw.headers["x-llmmesh-backend"]) == ("code-reviewer", MODEL)
    assert reply.model == "llmmesh"
    assert "reviewing code" in mesh.backend.last_prompt[0]["content"]
    assert mesh.backend.last_prompt[0]["role"] == "system"


async def test_a_pinned_agent_streams_with_its_headers(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    async with sdk.chat.completions.with_streaming_response.create(
        model="llmmesh-sports-coach", messages=[{"role": "user", "content": CODE}], max_tokens=4, stream=True
    ) as raw:
        assert (raw.headers["x-llmmesh-agent"], raw.headers["x-llmmesh-backend"]) == ("sports-coach", MODEL)
        chunks = [chunk async for chunk in await raw.parse()]

    assert chunks
    assert "sports coach" in mesh.backend.last_prompt[0]["content"]


async def test_a_backend_model_gets_the_default_agent(mesh: Mesh) -> None:
    response = await mesh.chat("What is the capital of France?")

    assert response.status_code == 200
    assert (response.headers["x-llmmesh-agent"], response.headers["x-llmmesh-backend"]) == ("general", MODEL)
    assert set(response.json()) == CHAT_KEYS  # nothing of the routing in the body


async def test_completions_carry_the_headers_too(mesh: Mesh) -> None:
    response = await mesh.http.post("/v1/completions", json={"model": "llmmesh", "prompt": "Once", "max_tokens": 2})

    assert response.status_code == 200
    assert response.headers["x-llmmesh-agent"] == "general"
    assert response.headers["x-llmmesh-backend"] == MODEL


@pytest.mark.parametrize("model", ["llmmesh-poet", "gpt-4o", "LLMMESH"])
async def test_unknown_public_names_are_404(mesh: Mesh, model: str) -> None:
    response = await mesh.chat("hello", model=model)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
