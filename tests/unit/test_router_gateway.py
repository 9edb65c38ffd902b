"""The public face of routing, in the in-process mesh (real router, real MiniLM, the instant
backend): /v1/models lists exactly the public names, the agent's persona reaches the model, and
the agent and backend come back in headers while the body stays OpenAI's."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from services.inference.embedder import Embedder
from services.inference.tokenizer import ChatTokenizer
from services.router.settings import RouterSettings
from tests.unit.mesh import API_KEY, MODEL, Mesh, MeshOptions, in_process_mesh

ROUTER_CONFIG = RouterSettings().config_path

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


async def test_the_agent_header_names_the_agent_whatever_the_content(mesh: Mesh) -> None:
    body = {"model": "llmmesh", "messages": [{"role": "user", "content": CODE}], "max_tokens": 4}
    named = await mesh.http.post("/v1/chat/completions", json=body, headers={"X-Llmmesh-Agent": "sports-coach"})
    unknown = await mesh.http.post("/v1/chat/completions", json=body, headers={"X-Llmmesh-Agent": "poet"})

    assert named.status_code == 200
    assert named.headers["x-llmmesh-agent"] == "sports-coach"
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "agent_not_found"


def _session() -> str:
    return f"sess-{uuid.uuid4().hex}"


def _mentions(prompt: list[dict[str, Any]], text: str) -> bool:
    return any(text in str(message.get("content")) for message in prompt)


async def test_a_history_only_agent_gets_the_window_and_no_recalled_memories(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    """code-reviewer's policy is `history`: the same session asked by the general agent
    (`history+recall`) recalls a fact that left the window, the code reviewer does not."""
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, MeshOptions(window_turns=1)) as mesh:
        sid = _session()
        for text in ("My cat is called Biscuit.", "Tell me a joke."):
            assert (await mesh.chat(text, session_id=sid, model="llmmesh-general")).status_code == 200
            await mesh.settle()
        await mesh.chat("What is my cat called?", session_id=sid, model="llmmesh-general")
        general = mesh.backend.last_prompt
        await mesh.settle()
        await mesh.chat("What is my cat called?", session_id=sid, model="llmmesh-code-reviewer")
        reviewer = mesh.backend.last_prompt
        await mesh.settle()

    assert _mentions(general, "Biscuit")
    assert not _mentions(reviewer, "Biscuit")
    assert _mentions(reviewer, "What is my cat called?")  # the window still reaches it


async def test_a_stateless_agent_neither_reads_nor_stores_the_session(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    config = yaml.safe_load(ROUTER_CONFIG.read_text())
    for agent in config["agents"]:
        if agent["name"] == "code-reviewer":
            agent["memory"] = "stateless"
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    options = MeshOptions(router_config=path)
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        sid = _session()
        first = await mesh.chat("My cat is called Biscuit.", session_id=sid, model="llmmesh-code-reviewer")
        await mesh.stored()
        second = await mesh.chat("What is my cat called?", session_id=sid, model="llmmesh-code-reviewer")
        await mesh.stored()
        prompt = mesh.backend.last_prompt
        stored = await mesh.store.session("default", sid)

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["x-session-id"] == sid  # still echoed
    assert not _mentions(prompt, "Biscuit")
    assert stored is None  # nothing was written


async def test_an_agents_sampling_defaults_fill_what_the_client_left_unset(mesh: Mesh) -> None:
    """code-reviewer's temperature is 0.2 (deploy/router.yaml); the client's own value wins."""
    await mesh.chat(CODE, model="llmmesh-code-reviewer")
    defaulted = mesh.backend.last_job
    await mesh.chat(CODE, model="llmmesh-code-reviewer", temperature=0.9)
    asked = mesh.backend.last_job

    assert defaulted is not None
    assert asked is not None
    assert defaulted.sampling.temperature == pytest.approx(0.2)
    assert "temperature" in defaulted.defaulted  # an external backend may leave it out
    assert asked.sampling.temperature == pytest.approx(0.9)
    assert "temperature" not in asked.defaulted
