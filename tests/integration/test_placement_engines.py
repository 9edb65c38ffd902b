"""Placement on the real engine: one inference service with two CPU engines (each on one share of
the cores, with a small KV cache). A session's turns land on one engine, whose prefix-cache hits
show that it reused the session's prompt so far; with that engine held busy, a new session goes
to the other one, and once it is overloaded (half of its 4 sequences running) the session's
next turn goes there too."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.gateway.placement import affinity_key
from tests.inference_rpc import generate
from tests.integration.conftest import MODEL, REPO
from tests.unit.helpers import free_port

pytestmark = pytest.mark.integration

# A system prompt of several KV cache blocks, so a turn's reused prefix shows in the hits.
SYSTEM = " ".join(f"Rule {i}: answer briefly and kindly." for i in range(50))


@pytest.fixture(scope="module")
def two_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target = f"127.0.0.1:{free_port()}"
    log = (tmp_path_factory.getbasetemp() / "two-engines.log").open("wb")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LLMMESH_INFERENCE_GRPC_PORT": target.rsplit(":", 1)[1],
        "LLMMESH_INFERENCE_DEVICES": "cpu",
        "LLMMESH_INFERENCE_CPU_ENGINES": "2",
        "LLMMESH_INFERENCE_CPU_KV_CACHE_GIB": "2",
        "LLMMESH_INFERENCE_MAX_MODEL_LEN": "2048",
        "LLMMESH_INFERENCE_MAX_NUM_SEQS": "4",
        "LLMMESH_INFERENCE_PLACEMENT_RUNNING_SHARE": "0.5",
        "LLMMESH_INFERENCE_EMBEDDINGS": "false",
        "LLMMESH_INFERENCE_BACKENDS_FILE": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.inference"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _engines(stub: inference_pb2_grpc.InferenceServiceStub) -> dict[str, inference_pb2.EngineLoad]:
    reply = await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)
    return {engine.engine: engine for engine in reply.engines}


async def _wait_for_engines(stub: inference_pb2_grpc.InferenceServiceStub, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if len(await _engines(stub)) == 2:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(1.0)
    raise AssertionError("the inference service did not come up with two engines")


def _turn(key: str, history: list[inference_pb2.HistoryTurn], question: str) -> inference_pb2.StartGeneration:
    return inference_pb2.StartGeneration(
        request_id=f"turn-{len(history)}",
        model=MODEL,
        messages=[
            common_pb2.ChatMessage(role="system", content=SYSTEM),
            common_pb2.ChatMessage(role="user", content=question),
        ],
        history=history,
        sampling=common_pb2.SamplingParams(temperature=0, max_tokens=8),
        affinity_key=key,
    )


async def _hold(
    stub: inference_pb2_grpc.InferenceServiceStub, key: str, history: list[inference_pb2.HistoryTurn], engine: str
) -> Any:
    """A long generation of session `key`, streaming on `engine` once this returns."""
    call = stub.Generate()
    long_turn = _turn(key, history, "Count to a thousand.")
    long_turn.sampling.max_tokens = 1500
    long_turn.sampling.ignore_eos = True
    await call.write(inference_pb2.GenerateRequest(start=long_turn))
    async for reply in call:
        if reply.WhichOneof("event") == "started":
            assert reply.started.engine == engine
        if reply.WhichOneof("event") == "delta":
            break
    return call


async def test_a_session_stays_on_the_engine_caching_it_and_a_new_one_avoids_a_busy_engine(two_engines: str) -> None:
    # The service takes a minute or two to start: retry connecting every second meanwhile,
    # instead of backing off for as long again.
    channel = grpc.aio.insecure_channel(two_engines, options=[("grpc.max_reconnect_backoff_ms", 1000)])
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    try:
        await _wait_for_engines(stub, timeout_s=300)
        session = affinity_key("tenant", "session-1")
        history: list[inference_pb2.HistoryTurn] = []
        placed: list[str] = []
        for number, question in enumerate(["What is a prime?", "And 7?", "And 9?"]):
            before = await _engines(stub)
            answer = await generate(stub, _turn(session, history, question))
            after = await _engines(stub)
            engine = answer.started.engine
            placed.append(engine)
            other = next(name for name in after if name != engine)
            assert after[other].prefix_cache_queries == before[other].prefix_cache_queries
            if number:
                # The system prompt and the turns before were cached on this engine by the last turn.
                assert after[engine].prefix_cache_hits - before[engine].prefix_cache_hits >= 256
            history.append(
                inference_pb2.HistoryTurn(
                    seq=number,
                    messages=[
                        common_pb2.ChatMessage(role="user", content=question),
                        common_pb2.ChatMessage(role="assistant", content=answer.text),
                    ],
                )
            )
        assert len(set(placed)) == 1, placed
        home = placed[0]

        # Hold the session's engine busy with a long generation of the same session.
        busy = [await _hold(stub, session, history, home)]
        new = await generate(stub, _turn(affinity_key("tenant", "session-2"), [], "Hello!"))
        assert new.started.engine != home
        # One running request of four is no overload: the session's own next turn still goes home.
        again = await generate(stub, _turn(session, history, "And 11?"))
        assert again.started.engine == home
        # Two are (half of its batch): the session's next turn goes to the other engine.
        busy.append(await _hold(stub, session, history, home))
        moved = await generate(stub, _turn(session, history, "And 13?"))
        assert moved.started.engine != home
        for call in busy:
            call.cancel()
    finally:
        await channel.close()
