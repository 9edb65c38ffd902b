"""Placement across inference replicas (services/gateway/placement.py) and across the engines of
one service (EnginePool.place): two real inference gRPC servers on loopback, each over the
instant backend paced as an engine that runs one stream at a time (the next one waits, and
GetLoad says so), one of them held busy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import REGISTRY

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.channels import insecure_channel
from services.common.placement import Overload
from services.gateway.placement import ReplicaPlacement, affinity_key
from services.inference.domain import LoadFigures
from services.inference.engine import EnginePool
from services.inference.instant import Pacing
from tests.inference_rpc import generate, serve_inference
from tests.unit.helpers import free_port
from tests.unit.mesh import MODEL, HeldBackend


def _start(key: str) -> inference_pb2.StartGeneration:
    return inference_pb2.StartGeneration(
        request_id="r",
        model=MODEL,
        messages=[common_pb2.ChatMessage(role="user", content="hello")],
        sampling=common_pb2.SamplingParams(max_tokens=3),
        affinity_key=key,
    )


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_session_stays_on_its_replica_and_new_turns_avoid_a_busy_one() -> None:
    one_stream = Pacing(tokens_per_s=1000, max_streams=1)
    backends = {"a": HeldBackend(MODEL, pacing=one_stream), "b": HeldBackend(MODEL, pacing=one_stream)}
    async with serve_inference(backends["a"]) as stub_a, serve_inference(backends["b"]) as stub_b:
        stubs = {"a": stub_a, "b": stub_b}
        placement = ReplicaPlacement(stubs, poll_s=0.05)
        placement.start()
        try:
            await _until(lambda: len(placement.loads()) == 2)
            session = affinity_key("tenant", "session-1")

            # Consecutive turns of one session land on one replica, each answered there.
            home = placement.pick(session)
            name = next(n for n, s in stubs.items() if s is home)
            other = next(n for n in stubs if n != name)
            for _ in range(4):
                stub = placement.pick(session)
                assert stub is home
                answer = await generate(stub, _start(session))
                assert answer.finish_reason == "length"

            # Hold the session's replica busy: a stream stops there after its first token.
            backends[name].gate.clear()
            busy = [asyncio.create_task(generate(home, _start("")))]
            await _until(lambda: backends[name].load()[0].running == 1)
            await placement.refresh()
            # New sessions go to the idle replica; the session stays home (busy, not overloaded).
            for index in range(3):
                await placement.refresh()  # forget the turns picked (and never sent) just before
                assert placement.pick(affinity_key("tenant", f"new-{index}")) is stubs[other]
            assert placement.pick(session) is home

            # A second stream waits there for the first: overloaded, the session moves too.
            busy.append(asyncio.create_task(generate(home, _start(""))))
            await _until(lambda: backends[name].load()[0].waiting == 1)
            await placement.refresh()
            assert placement.pick(session) is stubs[other]

            backends[name].gate.set()
            await asyncio.gather(*busy)
        finally:
            await placement.stop()


async def test_a_replica_that_does_not_answer_is_left_out() -> None:
    dead = insecure_channel(f"127.0.0.1:{free_port()}")
    async with serve_inference(HeldBackend(MODEL)) as live:
        placement = ReplicaPlacement({"dead": inference_pb2_grpc.InferenceServiceStub(dead), "live": live})
        try:
            await placement.refresh()
            assert list(placement.loads()) == ["live"]
            # "dead" comes first and the key last went there, yet only "live" answers its load.
            assert all(placement.pick(affinity_key("t", f"s{i}")) is live for i in range(3))
        finally:
            await placement.stop()
            await dead.close()


def _engine(name: str, **figures: Any) -> Any:
    load = LoadFigures(name, MODEL, "cpu", max_num_seqs=8, reported_at=time.monotonic(), **figures)
    return SimpleNamespace(name=name, load=load)


def _runs(engine: Any, requests: int) -> None:
    engine.load.running = engine.load.outstanding = requests


def _placements(reason: str) -> float:
    return REGISTRY.get_sample_value("llmmesh_inference_placements_total", {"reason": reason}) or 0.0


def test_the_engine_pool_keeps_a_session_on_its_engine_until_that_one_is_overloaded() -> None:
    engines = [_engine("engine-0"), _engine("engine-1")]
    tokenizer = cast(Any, SimpleNamespace(hf=None))
    pool = EnginePool(MODEL, Path("."), tokenizer, engines, overload=Overload(running_share=0.5))
    before = _placements("affinity"), _placements("least_loaded")

    assert pool.place("s1").name == "engine-0"
    _runs(engines[0], 3)  # busy, but under half of its 8 sequences
    assert pool.place("s1").name == "engine-0"
    assert pool.place("s2").name == "engine-1"  # a new session: the least loaded
    _runs(engines[0], 4)  # half of its batch: overloaded
    assert pool.place("s1").name == "engine-1"

    assert (_placements("affinity") - before[0], _placements("least_loaded") - before[1]) == (1, 3)
