"""Fallback seen from the client: an agent whose chain starts with a failing external backend
(the test-only fault server of tests/fault_server.py, reached through the real openai SDK)
answers from the next candidate as one normal response, the header naming the model that
answered; a chain with nothing left is a 503 in OpenAI's shape naming only the backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import yaml

from services.inference.backends.config import BackendConfig
from services.inference.embedder import Embedder
from services.inference.tokenizer import ChatTokenizer
from services.router.settings import RouterSettings
from tests.fault_server import FaultServer, fault_server
from tests.unit.mesh import API_KEY, MODEL, Mesh, MeshOptions, in_process_mesh

SECRET = "sk-fallback-test-must-never-leak"


@pytest.fixture
async def faulty() -> AsyncIterator[FaultServer]:
    async with fault_server("503") as server:
        yield server


@pytest.fixture
async def mesh_with_fallback(
    faulty: FaultServer,
    valkey_url: str,
    tmp_path: Path,
    smollm2_tokenizer: ChatTokenizer,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Mesh]:
    """code-reviewer's chain: the fault server's model first, then the local one; the general
    agent's: the fault server's model alone."""
    monkeypatch.setenv("FAULTY_KEY", SECRET)
    config = yaml.safe_load(RouterSettings().config_path.read_text())
    for agent in config["agents"]:
        agent["candidates"] = ["faulty/m", "local"] if agent["name"] == "code-reviewer" else ["faulty/m"]
    router_config = tmp_path / "router.yaml"
    router_config.write_text(yaml.safe_dump(config))
    backend = BackendConfig(
        name="faulty",
        kind="openai-compatible",
        base_url=faulty.base_url,
        api_key_env="FAULTY_KEY",
        models=["m"],
        first_token_timeout_s=0.5,
    )
    options = MeshOptions(router_config=router_config, backends=[backend])
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        yield mesh


@pytest.mark.parametrize("mode", ["503", "429", "stall"])
async def test_a_failing_first_backend_is_invisible_to_the_client(
    mesh_with_fallback: Mesh, faulty: FaultServer, mode: str
) -> None:
    faulty.mode = mode
    sdk = openai.AsyncOpenAI(base_url=f"{mesh_with_fallback.http.base_url}/v1", api_key=API_KEY, max_retries=0)

    raw = await sdk.chat.completions.with_raw_response.create(
        model="llmmesh-code-reviewer", messages=[{"role": "user", "content": "Review this."}], max_tokens=3
    )
    reply = raw.parse()

    assert faulty.requests == 1  # it was asked first
    assert raw.headers["x-llmmesh-backend"] == MODEL  # and the local model answered
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3


async def test_a_chain_with_nothing_left_is_a_503_naming_the_backends(mesh_with_fallback: Mesh) -> None:
    response = await mesh_with_fallback.chat("hello", model="llmmesh-general")

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "backends_unavailable"
    assert "faulty" in error["message"]
    assert "127.0.0.1" not in error["message"]
    assert SECRET not in response.text
