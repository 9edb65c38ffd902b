"""The external backends against a real peer: vLLM's own OpenAI server on the embedded model
serves OpenAI's /v1/chat/completions (for the `openai-compatible` and `openai` kinds, through
the openai SDK) and Anthropic's /v1/messages (for the `anthropic` kind, through the anthropic
SDK). Requests go through the inference service's gRPC servicer in this process, as the
gateway sends them. Answers are compared with vLLM's own non-streamed answer to the same
request: the backends stream upstream, and what they assemble must be the same text, finish
reason and usage. The peer decodes greedily by default (its model's generation config says
so), since Anthropic's Messages API no longer takes a temperature.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from bench.procs import MODEL, vllm_server
from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.errors import from_rpc_error
from services.inference import sizing
from services.inference.backends.config import BackendConfig
from services.inference.backends.cooldown import Cooldowns
from services.inference.backends.registry import BackendRegistry, external_backend
from services.inference.domain import PromptLimits
from services.inference.instant import InstantBackend
from services.inference.model_store import prepare_default_model
from services.inference.settings import InferenceSettings
from tests.inference_rpc import Answer, generate, serve_inference
from tests.unit.helpers import free_port

pytestmark = pytest.mark.integration

SYSTEM = "You are terse."
QUESTION = "Name three colors."
KEY_VARIABLE = "LLMMESH_TEST_PEER_KEY"  # vLLM started without --api-key takes any key


def greedy_model(folder: Path, into: Path) -> Path:
    """The embedded model (linked, not copied) with greedy decoding as its default: vLLM's server
    applies a model's generation config to the requests that set no temperature."""
    for item in folder.iterdir():
        if item.name != "generation_config.json":
            (into / item.name).symlink_to(item)
    config = json.loads((folder / "generation_config.json").read_text())
    (into / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.0}))
    return into


@pytest.fixture(scope="session")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM's own server, started as the engine-path benchmark starts it."""
    model = greedy_model(prepare_default_model(InferenceSettings().cache_dir), tmp_path_factory.mktemp("model"))
    plan = sizing.plan_cpu_engine(sizing.Machine.detect())
    with vllm_server(model, free_port(), tmp_path_factory.mktemp("peer"), plan.env(), "vllm-peer") as base:
        yield base


@pytest.fixture
async def stub(peer: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    monkeypatch.setenv(KEY_VARIABLE, "peer-key")
    configs = [
        BackendConfig(name="vllm", kind="openai-compatible", base_url=f"{peer}/v1", models=[MODEL, "no-such-model"]),
        BackendConfig(name="oai", kind="openai", base_url=f"{peer}/v1", api_key_env=KEY_VARIABLE, models=[MODEL]),
        BackendConfig(name="claude", kind="anthropic", base_url=peer, api_key_env=KEY_VARIABLE, models=[MODEL]),
        BackendConfig(
            name="down", kind="openai-compatible", base_url=f"http://127.0.0.1:{free_port()}/v1", models=["m"]
        ),
    ]
    externals = [external_backend(c, PromptLimits()) for c in configs]
    registry = BackendRegistry(InstantBackend("local"), "instant", externals, Cooldowns(3, 30.0))
    try:
        async with serve_inference(registry) as running:
            yield running
    finally:
        for backend in externals:
            await backend.aclose()


@pytest.fixture(scope="module")
def reference(peer: str) -> dict[str, Any]:
    """vLLM's own non-streamed greedy answer (12 tokens at most)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "max_tokens": 12,
    }
    reply = httpx.post(f"{peer}/v1/chat/completions", json=body, timeout=60)
    reply.raise_for_status()
    answer: dict[str, Any] = reply.json()
    return answer


def start(model: str, *candidates: str, **sampling: Any) -> inference_pb2.StartGeneration:
    return inference_pb2.StartGeneration(
        request_id="peer-test",
        model=model,
        candidates=candidates,
        messages=[
            common_pb2.ChatMessage(role="system", content=SYSTEM),
            common_pb2.ChatMessage(role="user", content=QUESTION),
        ],
        sampling=common_pb2.SamplingParams(**sampling),
    )


def usage(answer: Answer) -> tuple[int, int]:
    assert answer.usage is not None
    return answer.usage.usage.prompt_tokens, answer.usage.usage.completion_tokens


@pytest.mark.parametrize("backend", ["vllm", "oai", "claude"])
async def test_streamed_answer_is_vllms_own_answer(
    stub: inference_pb2_grpc.InferenceServiceStub, reference: dict[str, Any], backend: str
) -> None:
    answer = await generate(stub, start(f"{backend}/{MODEL}", max_tokens=12))

    expected = reference["choices"][0]
    assert answer.started.backend_model == f"{backend}/{MODEL}"
    assert answer.text == expected["message"]["content"]
    assert len(answer.deltas) > 1  # it streamed
    assert answer.finish_reason == expected["finish_reason"] == "length"
    assert usage(answer) == (reference["usage"]["prompt_tokens"], 12)


@pytest.mark.parametrize("backend", ["vllm", "claude"])
async def test_stop_ends_the_answer_before_the_stop_text(
    stub: inference_pb2_grpc.InferenceServiceStub, reference: dict[str, Any], backend: str
) -> None:
    full = reference["choices"][0]["message"]["content"]
    stop = " " + full.split()[3]  # the fourth word

    answer = await generate(stub, start(f"{backend}/{MODEL}", max_tokens=12, stop=[stop]))

    assert answer.text == full[: full.index(stop)]
    assert answer.finish_reason == "stop"


@pytest.mark.parametrize("backend", ["vllm", "oai", "claude"])
async def test_an_upstream_400_is_the_clients_error(
    stub: inference_pb2_grpc.InferenceServiceStub, backend: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(stub, start(f"{backend}/{MODEL}", "local", max_tokens=100_000))

    error = from_rpc_error(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded")
    assert error.message.startswith(f"the backend `{backend}` refused the request: ")
    assert "max_model_len=8192" in error.message


async def test_a_dead_backend_or_an_unknown_upstream_model_falls_back_to_the_next(
    stub: inference_pb2_grpc.InferenceServiceStub, reference: dict[str, Any]
) -> None:
    answer = await generate(stub, start("down/m", "vllm/no-such-model", f"claude/{MODEL}", max_tokens=12))

    assert answer.started.backend_model == f"claude/{MODEL}"
    assert list(answer.started.tried) == ["down/m", "vllm/no-such-model"]
    assert answer.text == reference["choices"][0]["message"]["content"]


async def test_tools_reach_the_upstream_which_judges_them(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    """The peer runs without a tool parser (as the benchmark starts it), so it refuses a named
    tool choice: its refusal, reaching the client as a 400, shows the tools went through."""
    tool = {"type": "function", "function": {"name": "pick_color", "parameters": {"type": "object"}}}
    request = start(f"vllm/{MODEL}", "local", max_tokens=20)
    request.tools_json = json.dumps([tool])
    request.tool_choice, request.tool_name = "function", "pick_color"

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(stub, request)

    error = from_rpc_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'tool_choice=function "pick_color"' in error.message
