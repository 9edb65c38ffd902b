"""The walk down a request's candidates over real loopback HTTP: a test-only fault server
(tests/fault_server.py) plays the failing backend through the real openai SDK, the instant
backend is the local model that answers after it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2
from services.common.errors import MeshError, from_rpc_error
from services.inference.backends.config import BackendConfig
from services.inference.backends.cooldown import Cooldowns
from services.inference.backends.registry import BackendRegistry, external_backend
from services.inference.domain import ChoiceEnd, Delta, End, Event, GenerationJob, PromptLimits, Sampling, Started
from services.inference.instant import InstantBackend
from tests.fault_server import FaultServer, fault_server
from tests.inference_rpc import generate, serve_inference
from tests.unit.helpers import free_port

LOCAL = "smollm2-135m-instruct"
KEY = "sk-test-0123456789-must-never-leak"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(name: str, base_url: str, **fields: Any) -> BackendConfig:
    return BackendConfig(
        name=name,
        kind="openai-compatible",
        base_url=base_url,
        api_key_env="FAULTY_KEY",
        models=["m"],
        first_token_timeout_s=fields.pop("first_token_timeout_s", 0.5),
        **fields,
    )


def registry(*configs: BackendConfig, failures: int = 2, clock: Callable[[], float] | None = None) -> BackendRegistry:
    externals = [external_backend(c, PromptLimits()) for c in configs]
    cooldowns = Cooldowns(failures, 30.0, clock or Clock())
    return BackendRegistry(InstantBackend(LOCAL), "instant", externals, cooldowns)


def job(model: str, *candidates: str, max_tokens: int = 3) -> GenerationJob:
    return GenerationJob(
        request_id="req-1",
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        sampling=Sampling(max_tokens=max_tokens),
        candidates=list(candidates),
    )


async def run(reg: BackendRegistry, request: GenerationJob) -> list[Event]:
    return [event async for event in reg.generate(request)]


async def collect(stream: AsyncIterator[Event], into: list[Event]) -> None:
    async for event in stream:
        into.append(event)


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULTY_KEY", KEY)


@pytest.fixture
async def faulty() -> AsyncIterator[FaultServer]:
    async with fault_server("503") as server:
        yield server


@pytest.mark.parametrize("mode", ["503", "429", "stall", "dead"])
async def test_a_failing_first_candidate_is_invisible(faulty: FaultServer, mode: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1" if mode == "dead" else faulty.base_url
    faulty.mode = mode
    reg = registry(config("faulty", url))

    events = await run(reg, job("faulty/m", LOCAL))

    assert isinstance(events[0], Started)
    assert (events[0].backend_model, events[0].tried) == (LOCAL, ["faulty/m"])
    assert [e.text for e in events if isinstance(e, Delta)] == [" tok"] * 3
    assert events[-1] == End(events[0].prompt_tokens, 3)
    assert faulty.requests == (0 if mode == "dead" else 1)


async def test_the_first_candidate_answers_through_the_sdk(faulty: FaultServer) -> None:
    faulty.mode = "ok"
    reg = registry(config("faulty", faulty.base_url))

    events = await run(reg, job("faulty/m", LOCAL))

    assert isinstance(events[0], Started)
    assert (events[0].backend_model, events[0].tried) == ("faulty/m", [])
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "Hello world"
    assert events[-2:] == [ChoiceEnd(0, "stop"), End(5, 2)]
    assert faulty.last_headers["authorization"] == f"Bearer {KEY}"


async def test_after_n_failures_a_backend_cools_down_then_is_tried_again(faulty: FaultServer) -> None:
    clock = Clock()
    reg = registry(config("faulty", faulty.base_url), failures=2, clock=clock)

    for _ in range(2):
        await run(reg, job("faulty/m", LOCAL))
    assert faulty.requests == 2
    cooled = await run(reg, job("faulty/m", LOCAL))  # cooling down: not even asked
    assert faulty.requests == 2
    assert isinstance(cooled[0], Started)
    assert cooled[0].backend_model == LOCAL

    clock.now += 31
    faulty.mode = "ok"
    again = await run(reg, job("faulty/m", LOCAL))
    assert faulty.requests == 3
    assert isinstance(again[0], Started)
    assert again[0].backend_model == "faulty/m"


async def test_an_exhausted_chain_names_the_backends_tried_and_nothing_else(
    faulty: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    dead_port = free_port()
    reg = registry(config("faulty", faulty.base_url), config("gone", f"http://127.0.0.1:{dead_port}/v1"))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(MeshError) as raised:
        await run(reg, job("faulty/m", "gone/m"))

    error = raised.value
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "backends_unavailable")
    assert error.message == "No backend could answer the request; tried: faulty (HTTP 503), gone (connection failed)."
    assert faulty.last_headers["authorization"] == f"Bearer {KEY}"  # the key was used...
    for text in (error.message, caplog.text, repr(reg.externals[0].config), str(reg.externals[0].config)):
        assert KEY not in text  # ...and shows nowhere
    assert str(faulty.port) not in error.message
    assert str(dead_port) not in error.message


async def test_a_failure_after_the_first_token_ends_the_stream_with_an_error(faulty: FaultServer) -> None:
    faulty.mode = "broken"
    reg = registry(config("faulty", faulty.base_url))
    seen: list[Event] = []

    with pytest.raises(MeshError) as raised:
        await collect(reg.generate(job("faulty/m", LOCAL)), seen)

    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.UNAVAILABLE, "backend_failed")
    assert [type(e) for e in seen] == [Started, Delta]  # no fallback once text went out
    assert faulty.requests == 1


async def test_closing_the_stream_closes_the_upstream_connection(faulty: FaultServer) -> None:
    faulty.mode = "hang"
    reg = registry(config("faulty", faulty.base_url, read_timeout_s=30))
    stream = reg.generate(job("faulty/m"))

    assert isinstance(await anext(stream), Started)
    assert isinstance(await anext(stream), Delta)
    assert faulty.open_connections == 1
    await stream.aclose()  # what cancelling the servicer's pump does

    await faulty.wait_closed_connections()


async def test_a_request_error_is_not_a_reason_to_fall_back(faulty: FaultServer) -> None:
    reg = registry(config("faulty", faulty.base_url))
    request = job("faulty/m", LOCAL)
    request.sampling.top_k = 5  # no OpenAI-compatible server is sure to honour it

    with pytest.raises(MeshError) as raised:
        await run(reg, request)

    assert (raised.value.code, raised.value.param) == (grpc.StatusCode.INVALID_ARGUMENT, "top_k")
    assert faulty.requests == 0


async def test_a_candidate_that_cannot_honour_the_request_is_skipped(faulty: FaultServer) -> None:
    reg = registry(config("faulty", faulty.base_url))
    request = job(LOCAL, "faulty/m")
    request.sampling.top_k = 5

    events = await run(reg, request)

    assert isinstance(events[0], Started)
    assert events[0].backend_model == LOCAL
    assert faulty.requests == 0


async def test_over_grpc_the_chosen_model_and_the_tried_ones_come_back(faulty: FaultServer) -> None:
    reg = registry(config("faulty", faulty.base_url))
    async with serve_inference(reg) as stub:
        models = await stub.ListModels(inference_pb2.ListModelsRequest())
        answer = await generate(
            stub,
            inference_pb2.StartGeneration(
                model="faulty/m",
                candidates=[LOCAL],
                messages=answer_messages(),
                sampling=common_pb2.SamplingParams(max_tokens=2),
            ),
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await generate(stub, inference_pb2.StartGeneration(model="faulty/m", messages=answer_messages()))

    assert [(m.id, m.backend, m.kind) for m in models.models] == [
        (LOCAL, "local", "instant"),
        ("faulty/m", "faulty", "openai-compatible"),
    ]
    assert (answer.started.backend_model, list(answer.started.tried)) == (LOCAL, ["faulty/m"])
    assert answer.text == " tok tok"
    error = from_rpc_error(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "backends_unavailable")
    assert error.message == "No backend could answer the request; tried: faulty (HTTP 503)."


def answer_messages() -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role="user", content="hi")]


@pytest.mark.parametrize("how", ["cancel message", "client gone"])
async def test_cancelling_the_rpc_closes_the_upstream_stream(faulty: FaultServer, how: str) -> None:
    faulty.mode = "hang"
    reg = registry(config("faulty", faulty.base_url, read_timeout_s=30))
    async with serve_inference(reg) as stub:
        call = stub.Generate()
        await call.write(
            inference_pb2.GenerateRequest(
                start=inference_pb2.StartGeneration(model="faulty/m", messages=answer_messages())
            )
        )
        assert (await call.read()).WhichOneof("event") == "started"
        assert (await call.read()).delta.text == "Hello"
        assert faulty.open_connections == 1
        if how == "cancel message":
            await call.write(inference_pb2.GenerateRequest(cancel=inference_pb2.CancelGeneration()))
            assert (await call.read()).end.cancelled
        else:
            call.cancel()

        await faulty.wait_closed_connections()


class EngineDeadError(Exception):
    """Stands for vLLM's own, matched by its module and name (importing vLLM takes seconds)."""


EngineDeadError.__module__ = "vllm.v1.engine.exceptions"


class DeadEngine(InstantBackend):
    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        raise EngineDeadError("EngineCore encountered an issue")
        yield  # an async generator, as the engine pool's is


async def test_a_dead_local_engine_falls_back_to_an_external_backend(faulty: FaultServer) -> None:
    faulty.mode = "ok"
    externals = [external_backend(config("faulty", faulty.base_url), PromptLimits())]
    reg = BackendRegistry(DeadEngine(LOCAL), "vllm", externals, Cooldowns(2, 30.0, Clock()))

    events = await run(reg, job(LOCAL, "faulty/m"))

    assert isinstance(events[0], Started)
    assert (events[0].backend_model, events[0].tried) == ("faulty/m", [LOCAL])
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "Hello world"


async def test_the_registry_says_while_a_local_engine_generates() -> None:
    """What background embeddings step aside for (embedder.py): a request in flight on the
    local engine, and nothing once it is done."""
    reg = registry()
    assert not reg.generating()
    stream = reg.generate(job(LOCAL, max_tokens=3))
    await anext(stream)
    during = reg.generating()
    async for _ in stream:
        pass
    assert during
    assert not reg.generating()
