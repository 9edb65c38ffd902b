"""Delta coalescing and the stream interval in the inference servicer, and the benchmark-only
instant backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from llmmesh.common.v1 import chat_pb2
from llmmesh.inference.v1 import inference_pb2
from services.inference.domain import ChoiceEnd, Delta, End, Event, GenerationJob, Sampling, Started
from services.inference.instant import InstantBackend
from services.inference.servicer import _coalesce
from tests.inference_rpc import generate, serve_inference


def queue_of(*items: Any) -> asyncio.Queue[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return queue


async def test_coalesce_merges_waiting_deltas_of_the_same_choice() -> None:
    end = ChoiceEnd(0, "stop")
    queue = queue_of(Delta(0, " b", 1), Delta(0, " c", 2), end, Delta(0, " d", 1))

    merged, pending = _coalesce(Delta(0, "a", 1), queue)

    assert merged == Delta(0, "a b c", 4)
    assert pending is end
    assert queue.qsize() == 1


async def test_coalesce_stops_at_another_choice() -> None:
    other = Delta(1, "x", 1)
    merged, pending = _coalesce(Delta(0, "a", 1), queue_of(other))

    assert merged == Delta(0, "a", 1)
    assert pending is other


async def test_coalesce_with_nothing_waiting_sends_the_delta_as_is() -> None:
    assert _coalesce(Delta(0, "a", 1), queue_of()) == (Delta(0, "a", 1), None)


def job(model: str = "bench", max_tokens: int | None = 5, n: int = 1) -> GenerationJob:
    return GenerationJob(
        request_id="r",
        model=model,
        messages=[{"role": "user", "content": "one two three"}],
        sampling=Sampling(max_tokens=max_tokens, n=n),
    )


async def test_instant_backend_streams_exactly_max_tokens_per_choice() -> None:
    backend = InstantBackend("bench")

    events = [event async for event in backend.generate(job(max_tokens=5, n=2))]

    assert events[0] == Started(4, "instant-0")
    assert [e for e in events if isinstance(e, Delta) and e.index == 1] == [Delta(1, " tok", 1)] * 5
    assert [e for e in events if isinstance(e, ChoiceEnd)] == [ChoiceEnd(0, "length"), ChoiceEnd(1, "length")]
    assert events[-1] == End(4, 10)
    assert backend.load()[0].outstanding == 0


async def test_instant_backend_rejects_other_models() -> None:
    with pytest.raises(Exception, match="does not exist"):
        [event async for event in InstantBackend("bench").generate(job(model="other"))]


class ScriptedBackend(InstantBackend):
    """Test double: one choice of single-token deltas, each after its own pause (seconds)."""

    def __init__(self, pauses: Sequence[float]) -> None:
        super().__init__("bench")
        self.pauses = pauses

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        yield Started(1, "scripted-0")
        for pause in self.pauses:
            await asyncio.sleep(pause)
            yield Delta(0, " tok", 1)
        yield ChoiceEnd(0, "length")
        yield End(1, len(self.pauses))


START = inference_pb2.StartGeneration(
    request_id="r", model="bench", messages=[chat_pb2.ChatMessage(role="user", content="hi")]
)


async def test_deltas_faster_than_the_interval_share_a_message_and_the_end_is_not_held() -> None:
    # 20 tokens 5 ms apart, a 10 s interval: the first goes alone, the other 19 wait for the
    # interval but go out with the choice's end, at once.
    async with serve_inference(ScriptedBackend([0.0] + [0.005] * 19), stream_interval_s=10.0) as stub:
        began = time.monotonic()
        answer = await generate(stub, START)

    assert [d.tokens for d in answer.deltas] == [1, 19]
    assert answer.text == " tok" * 20
    assert answer.finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.usage.completion_tokens == 20
    assert time.monotonic() - began < 5.0


async def test_deltas_slower_than_the_interval_go_out_one_by_one() -> None:
    async with serve_inference(ScriptedBackend([0.0, 0.2, 0.2, 0.2]), stream_interval_s=0.01) as stub:
        answer = await generate(stub, START)

    assert [d.tokens for d in answer.deltas] == [1, 1, 1, 1]


async def test_without_an_interval_nothing_is_held() -> None:
    async with serve_inference(ScriptedBackend([0.0] + [0.05] * 3)) as stub:
        answer = await generate(stub, START)

    assert [d.tokens for d in answer.deltas] == [1, 1, 1, 1]
