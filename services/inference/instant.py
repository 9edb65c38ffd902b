"""A benchmark-only backend that answers instantly, with no model at all.

It exists to measure what the mesh itself costs (Envoy, gateway, router, memory, the gRPC
hops and the token relay) with the engine's time taken out. It is never the default: it runs
only when ``LLMMESH_INFERENCE_BACKEND=instant`` is set, which `make bench` does for its
"hops" benchmark. Each completion token is the text " tok"; a prompt counts one token per
whitespace-separated word. In-process tests may set `script`: every choice then streams that
text, word by word, and stops, so what the mesh does with a model's output (tool-call
parsing, for one) runs on a known output.

`Pacing` makes it a stand-in for a fast engine (an H100-class one, say) instead: a time to first
token, a rate per stream, and a number of streams generating at once (the rest wait, as requests
queue in an engine). Tokens that fall due go out once per tick, as an engine's step would send
them, so the mesh can be measured at GPU speed on a machine without one.

Cached tokens are simulated as vLLM's prefix cache reports them (`PrefixCache`), so the usage a
client sees can be tested without an engine.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from services.inference.domain import (
    ChoiceEnd,
    Delta,
    End,
    Event,
    GenerationJob,
    LoadFigures,
    PromptLimits,
    Started,
    TokenLogprob,
    context_length_error,
    fit_job,
    unknown_model_error,
)
from services.inference.tokenizer import ChatTokenizer
from services.inference.tools import ToolCalling, parse_tool_calls, plan_tools

INSTANT_CONTEXT = 1 << 20


@dataclass(frozen=True)
class Pacing:
    tokens_per_s: float = 0.0  # per stream; 0: as fast as possible (no pacing)
    ttft_ms: float = 0.0
    max_streams: int = 0  # streams generating at once; 0: no limit
    tick_s: float = 0.01

    @property
    def paced(self) -> bool:
        return self.tokens_per_s > 0


class PrefixCache:
    """vLLM's automatic prefix caching, simulated: prompts are cut into blocks of `block_size`
    token ids, each block keyed by a hash of the whole prefix up to its end; a prompt's cached
    tokens are its leading full blocks already seen. As in vLLM, the last prompt token is always
    computed (a prompt never counts as wholly cached), and the least recently used blocks leave
    once `capacity` are held."""

    def __init__(self, block_size: int = 16, capacity: int = 4096) -> None:
        self.block_size = block_size
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def _keys(self, ids: Sequence[int]) -> list[bytes]:
        chain, keys = hashlib.blake2b(digest_size=16), []
        for end in range(self.block_size, len(ids) + 1, self.block_size):
            chain.update(b"," + ",".join(map(str, ids[end - self.block_size : end])).encode())
            keys.append(chain.copy().digest())
        return keys

    def lookup_and_store(self, ids: Sequence[int]) -> int:
        """The cached tokens of `ids`; its full blocks are then held."""
        keys = self._keys(ids)
        usable = (len(ids) - 1) // self.block_size
        hits = 0
        while hits < min(usable, len(keys)) and keys[hits] in self._blocks:
            hits += 1
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hits * self.block_size


DEFAULT_TOKENS = 16
# Yield to the event loop every this many tokens, so one long stream cannot starve the others.
_YIELD_EVERY = 64


class InstantBackend:
    """With `tokenizer`, prompts are counted (and trimmed) with a real model's tokenizer and
    chat template, so the fast test tier runs the same context fitting as the engine."""

    kind = "instant"

    def __init__(
        self,
        model_name: str,
        tokenizer: ChatTokenizer | None = None,
        context_length: int = INSTANT_CONTEXT,
        limits: PromptLimits | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        self.model_name = model_name
        self._pacing = pacing or Pacing()
        self._slots = asyncio.Semaphore(self._pacing.max_streams) if self._pacing.max_streams else None
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._limits = limits or PromptLimits()
        self._load = LoadFigures(engine="instant-0", model=model_name, device="none")
        self._tools = ToolCalling(self._limits.tool_parser, tokenizer.hf if tokenizer else None)
        self.prefix_cache = PrefixCache()
        # The last prompt generated for, so in-process tests can see what the model got.
        self.last_prompt: list[dict[str, Any]] = []
        self.last_prompt_ids: list[int] = []
        # Set by in-process tests: the text every choice answers (see the module docstring).
        self.script: str | None = None

    @property
    def source(self) -> str:
        return "instant (benchmark-only backend)"

    @property
    def engine_count(self) -> int:
        return 1

    @property
    def context_length(self) -> int:
        return self._context_length

    def _encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        if self._tokenizer is not None:
            return self._tokenizer.encode_chat(messages, tools)
        return [0] * sum(len(str(m.get("content", "")).split()) + 1 for m in messages)

    def _count_text(self, text: str) -> int:
        return self._tokenizer.count_text(text) if self._tokenizer is not None else len(text.split())

    async def count_tokens(self, model: str, messages: list[dict[str, Any]]) -> int:
        if model != self.model_name:
            raise unknown_model_error(model)
        return len(self._encode(messages))

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        if job.model != self.model_name:
            raise unknown_model_error(job.model)
        plan = plan_tools(self._tools, job) if self._tokenizer is not None else None
        events = self._generate(job)
        async for event in parse_tool_calls(plan, events) if plan else events:
            yield event

    def _prompt_ids(self, job: GenerationJob) -> list[int]:
        if self._tokenizer is not None:
            return self._tokenizer.raw_prompt(job).ids
        return list(job.prompt_ids) or [0] * len(job.prompt.split())

    async def _generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        if job.raw_prompt:
            prompt_ids, dropped, memories_used = self._prompt_ids(job), 0, 0
            self.last_prompt = []
        else:
            prompt = fit_job(job, self._encode, self._count_text, self._context_length, self._limits)
            prompt_ids, dropped, memories_used = prompt.ids, prompt.dropped_turns, prompt.memories_used
            self.last_prompt = prompt.messages
        self.last_prompt_ids = prompt_ids
        prompt_tokens = len(prompt_ids)
        # Only real token ids can hit a cache (without a tokenizer a chat's ids are placeholders).
        real_ids = self._tokenizer is not None or bool(job.prompt_ids)
        cached = self.prefix_cache.lookup_and_store(prompt_ids) if real_ids else 0
        wanted = job.sampling.max_tokens or DEFAULT_TOKENS
        if prompt_tokens + wanted > self._context_length:
            raise context_length_error(prompt_tokens, job.sampling.max_tokens, self._context_length)
        if self.script is not None:
            words = [w for w in self.script.split(" ")]
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)][:wanted]
            finish = "stop" if len(words) <= wanted else "length"
        else:
            pieces, finish = [" tok"] * wanted, "length"
        self._load.outstanding += 1
        try:
            yield Started(prompt_tokens, self._load.engine, dropped, memories_used)
            if self._pacing.paced:
                async for event in self._paced(job, pieces, finish, prompt_tokens, cached):
                    yield event
                return
            for index in range(job.sampling.n):
                for produced, piece in enumerate(pieces):
                    logprobs = [TokenLogprob(piece, -0.5, [(piece, -0.5)] * (job.sampling.logprobs or 0))]
                    yield Delta(index, piece, 1, logprobs=logprobs if job.sampling.logprobs is not None else [])
                    if produced % _YIELD_EVERY == _YIELD_EVERY - 1:
                        await asyncio.sleep(0)
                yield ChoiceEnd(index, finish)
            yield End(prompt_tokens, len(pieces) * job.sampling.n, cached)
        finally:
            self._load.outstanding -= 1

    async def _paced(
        self, job: GenerationJob, pieces: list[str], finish: str, prompt_tokens: int, cached: int
    ) -> AsyncIterator[Event]:
        """Every choice at the paced rate, after the time to first token, within the stream slots."""
        pacing, loop = self._pacing, asyncio.get_running_loop()
        if self._slots is not None:
            self._load.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._load.waiting -= 1
        self._load.running += 1
        try:
            await asyncio.sleep(pacing.ttft_ms / 1000)
            start, sent = loop.time(), 0
            while sent < len(pieces):
                due = min(len(pieces), 1 + int((loop.time() - start) * pacing.tokens_per_s))
                if due > sent:
                    text = "".join(pieces[sent:due])
                    for index in range(job.sampling.n):
                        yield Delta(index, text, due - sent)
                    sent = due
                if sent < len(pieces):
                    await asyncio.sleep(pacing.tick_s)
            for index in range(job.sampling.n):
                yield ChoiceEnd(index, finish)
            yield End(prompt_tokens, len(pieces) * job.sampling.n, cached)
        finally:
            self._load.running -= 1
            if self._slots is not None:
                self._slots.release()

    def load(self) -> list[LoadFigures]:
        return [self._load]

    def shutdown(self) -> None:
        pass
