"""A benchmark-only backend that answers instantly, with no model at all.

It exists to measure what the mesh itself costs (Envoy, gateway, router, memory, the gRPC
hops and the token relay) with the engine's time taken out. It is never the default: it runs
only when ``LLMMESH_INFERENCE_BACKEND=instant`` is set, which `make bench` does for its
"hops" benchmark. Each completion token is the text " tok"; a prompt counts one token per
whitespace-separated word.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.inference.engine import (
    ChoiceEnd,
    Delta,
    End,
    Event,
    GenerationJob,
    LoadFigures,
    Started,
    context_length_error,
    unknown_model_error,
)

INSTANT_CONTEXT = 1 << 20
DEFAULT_TOKENS = 16
# Yield to the event loop every this many tokens, so one long stream cannot starve the others.
_YIELD_EVERY = 64


class InstantBackend:
    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._load = LoadFigures(engine="instant-0", model=model_name, device="none")

    @property
    def source(self) -> str:
        return "instant (benchmark-only backend)"

    @property
    def engine_count(self) -> int:
        return 1

    @property
    def context_length(self) -> int:
        return INSTANT_CONTEXT

    @staticmethod
    def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
        return sum(len(str(m.get("content", "")).split()) + 1 for m in messages)

    async def count_tokens(self, model: str, messages: list[dict[str, Any]]) -> int:
        if model != self.model_name:
            raise unknown_model_error(model)
        return self._prompt_tokens(messages)

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        if job.model != self.model_name:
            raise unknown_model_error(job.model)
        prompt_tokens = self._prompt_tokens(job.messages)
        wanted = job.sampling.max_tokens or DEFAULT_TOKENS
        if prompt_tokens + wanted > INSTANT_CONTEXT:
            raise context_length_error(prompt_tokens, wanted, INSTANT_CONTEXT)
        self._load.outstanding += 1
        try:
            yield Started(prompt_tokens, self._load.engine)
            for index in range(job.sampling.n):
                for produced in range(wanted):
                    yield Delta(index, " tok", 1)
                    if produced % _YIELD_EVERY == _YIELD_EVERY - 1:
                        await asyncio.sleep(0)
                yield ChoiceEnd(index, "length")
            yield End(prompt_tokens, wanted * job.sampling.n)
        finally:
            self._load.outstanding -= 1

    def load(self) -> list[LoadFigures]:
        return [self._load]

    def shutdown(self) -> None:
        pass
