"""Delta coalescing in the inference servicer, and the benchmark-only instant backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.inference.engine import ChoiceEnd, Delta, End, GenerationJob, Sampling, Started
from services.inference.instant import InstantBackend
from services.inference.servicer import _coalesce


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
