"""The instant backend paced as a fast engine: a time to first token, a rate per stream, stream
slots; tokens that fall due go out together, once per tick. Only lower bounds on time are
asserted (a sleep never ends early); the rest is counted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.inference.domain import ChoiceEnd, Delta, End, GenerationJob, Sampling, Started
from services.inference.instant import InstantBackend, Pacing

MODEL = "paced"


def _job(tokens: int, n: int = 1) -> GenerationJob:
    return GenerationJob("r", MODEL, [{"role": "user", "content": "hi"}], Sampling(max_tokens=tokens, n=n))


async def _events(backend: InstantBackend, job: GenerationJob) -> list[Any]:
    return [event async for event in backend.generate(job)]


async def test_tokens_come_at_the_paced_rate_after_the_first_token_time() -> None:
    backend = InstantBackend(MODEL, pacing=Pacing(tokens_per_s=200, ttft_ms=50, tick_s=0.01))

    started = time.perf_counter()
    events = await _events(backend, _job(40, n=2))
    elapsed = time.perf_counter() - started

    deltas = [e for e in events if isinstance(e, Delta)]
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], End)
    assert events[-1].completion_tokens == 80
    assert [e.index for e in events if isinstance(e, ChoiceEnd)] == [0, 1]
    assert sum(d.tokens for d in deltas if d.index == 0) == 40
    assert "".join(d.text for d in deltas if d.index == 1) == " tok" * 40
    # 50 ms to the first token, then 39 more at 200/s: at least 245 ms.
    assert elapsed >= 0.05 + 39 / 200 * 0.95
    # Per tick, not per token: far fewer deltas than tokens.
    assert len([d for d in deltas if d.index == 0]) < 40


async def test_streams_beyond_the_slots_wait_their_turn() -> None:
    backend = InstantBackend(MODEL, pacing=Pacing(tokens_per_s=1000, max_streams=1, tick_s=0.005))
    producers: list[str] = []  # which stream each delta came from, in arrival order

    async def run(name: str) -> None:
        async for event in backend.generate(_job(5)):
            if isinstance(event, Delta):
                producers.append(name)

    await asyncio.gather(run("a"), run("b"))

    runs = [name for i, name in enumerate(producers) if i == 0 or producers[i - 1] != name]
    assert sorted(runs) == ["a", "b"]  # one stream generated at a time, never interleaved
    assert backend.load()[0].running == 0
    assert backend.load()[0].waiting == 0


async def test_unpaced_is_still_instant() -> None:
    backend = InstantBackend(MODEL)

    events = await _events(backend, _job(3))

    assert [e.tokens for e in events if isinstance(e, Delta)] == [1, 1, 1]
