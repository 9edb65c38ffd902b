"""POST /v1/completions: OpenAI's (legacy) prompt API, JSON and SSE.

A raw prompt goes to the model with no chat template, no persona and no memory; the router
still resolves the model name. A batch of prompts runs as concurrent generations, and choice
`i * n + j` is the j-th completion of prompt i, as OpenAI numbers them. Each prompt of a batch
is one request to the key's limits (a request, a slot, its tokens).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field, model_validator

from llmmesh.common.v1 import chat_pb2 as common_pb2
from services.common.context import request_id_var
from services.common.errors import MeshError
from services.gateway.auth import Caller
from services.gateway.errors import APIError
from services.gateway.limits import Limiter
from services.gateway.pipeline import ChatPipeline, ChatTurn, ChoiceDone, Delta, Done
from services.gateway.protocol import INT32_MAX, GenerationRequest
from services.gateway.streaming import (
    DONE,
    SSE_HEADERS,
    decision_headers,
    first_event,
    sse,
    unless_disconnected,
    usage,
)

MAX_PROMPTS = 64
MAX_LOGPROBS = 5  # OpenAI's limit for this API
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this API


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=INT32_MAX)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=16)
    suffix: str | None = None

    @model_validator(mode="after")
    def _refuse(self) -> CompletionRequest:
        if self.suffix:
            raise APIError.invalid("'suffix' (insertion) is not supported by this model.", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise APIError.invalid("'best_of' must be unset or equal to 'n': candidates are not ranked.", "best_of")
        if self.echo and self.logprobs is not None:
            raise APIError.invalid("'echo' with 'logprobs' (prompt log probabilities) is not supported.", "echo")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt as text or token ids; a batch holds at most MAX_PROMPTS."""
        raw = self.prompt
        if isinstance(raw, str):
            prompts: list[str | list[int]] = [raw]
        elif raw and all(isinstance(p, int) for p in raw):
            prompts = [[int(p) for p in raw if isinstance(p, int)]]
        else:
            prompts = [p if isinstance(p, str) else list(p) for p in raw if not isinstance(p, int)]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise APIError.invalid("'prompt' must not be empty.", "prompt")
        if len(prompts) > MAX_PROMPTS:
            raise APIError.invalid(f"'prompt' may hold at most {MAX_PROMPTS} prompts.", "prompt")
        if any(isinstance(p, list) and not all(0 <= t <= INT32_MAX for t in p) for p in prompts):
            raise APIError.invalid("Token ids in 'prompt' must be non-negative integers.", "prompt")
        return prompts

    def to_sampling(self) -> common_pb2.SamplingParams:
        sampling = self.base_sampling(self.max_tokens)
        if self.logprobs is not None:
            sampling.logprobs = self.logprobs
        return sampling


class _Logprobs:
    """The completions API's logprobs object of one choice (tokens, offsets, top alternatives)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.body: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, logprobs: Any) -> dict[str, list[Any]]:
        added: dict[str, list[Any]] = {key: [] for key in self.body}
        for p in logprobs:
            added["tokens"].append(p.token)
            added["token_logprobs"].append(p.logprob)
            added["top_logprobs"].append({t.token: t.logprob for t in p.top})
            added["text_offset"].append(self.offset)
            self.offset += len(p.token)
        for key, values in added.items():
            self.body[key].extend(values)
        return added


def create_router(pipeline: ChatPipeline, caller: Callable[..., Awaitable[Caller]], limiter: Limiter) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request, caller_: Caller = Depends(caller)) -> Response:
        request_id = request_id_var.get()
        sampling = body.to_sampling()
        turns = [
            ChatTurn(
                request_id=f"{request_id}-{i}" if i else request_id,
                tenant=caller_.tenant,
                model=body.model,
                messages=[],
                sampling=sampling,
                prompt=p if isinstance(p, str) else "",
                prompt_ids=p if isinstance(p, list) else [],
                user=body.user or "",
            )
            for i, p in enumerate(body.prompts())
        ]
        completion = _Completion(body, [t.prompt for t in turns])
        streams = [limiter.limit(caller_, t, pipeline.run(t)) for t in turns]
        # Every generation is accepted before anything is sent: a bad request is a plain error.
        firsts = await unless_disconnected(request, asyncio.gather(*(first_event(s) for s in streams)))
        prompt_tokens = sum(f.prompt_tokens for f in firsts)
        headers = decision_headers(firsts[0])  # the first prompt's (all share the model and no persona)
        events = _merge(streams, body.n)
        if body.stream:
            return StreamingResponse(
                completion.sse(events, prompt_tokens),
                media_type="text/event-stream",
                headers={**headers, **SSE_HEADERS},
            )
        return JSONResponse(await unless_disconnected(request, completion.collect(events)), headers=headers)

    return router


async def _merge(streams: list[AsyncIterator[Any]], n: int) -> AsyncIterator[tuple[int, Any]]:
    """The events of every prompt's generation as they come, each with its prompt's number
    (choice indexes renumbered to `prompt * n + j`); ends after every stream's Done."""
    queue: asyncio.Queue[tuple[int, Any] | BaseException | None] = asyncio.Queue()

    async def pump(number: int, events: AsyncIterator[Any]) -> None:
        try:
            async for event in events:
                if isinstance(event, Delta):
                    event = Delta(number * n + event.index, event.text, event.tokens, (), event.logprobs)
                elif isinstance(event, ChoiceDone):
                    event = ChoiceDone(number * n + event.index, event.finish_reason)
                await queue.put((number, event))
            await queue.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()  # a failure or a gone client cancels the other generations


class _Completion:
    def __init__(self, body: CompletionRequest, prompts: list[str]) -> None:
        self.body = body
        self.id = f"cmpl-{uuid.uuid4().hex}"  # the server's own: a request id may repeat
        self.created = int(time.time())
        self.choices = len(prompts) * body.n
        # Echo: each choice starts with its prompt (text prompts; token prompts echo nothing).
        self.echo = [prompts[i // body.n] if body.echo else "" for i in range(self.choices)]

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.body.model,
            "choices": choices,
        }

    async def collect(self, events: AsyncIterator[tuple[int, Any]]) -> dict[str, Any]:
        texts = [[echo] for echo in self.echo]
        logprobs = [_Logprobs(len(echo)) for echo in self.echo]
        finish: dict[int, str] = {}
        prompt_tokens = completion_tokens = cached_tokens = 0
        async for _, event in events:
            if isinstance(event, Delta):
                texts[event.index].append(event.text)
                logprobs[event.index].add(event.logprobs)
            elif isinstance(event, ChoiceDone):
                finish[event.index] = event.finish_reason
            elif isinstance(event, Done):
                prompt_tokens += event.prompt_tokens
                completion_tokens += event.completion_tokens
                cached_tokens += event.cached_tokens
        choices = [
            {
                "index": i,
                "text": "".join(texts[i]),
                "logprobs": logprobs[i].body if self.body.logprobs is not None else None,
                "finish_reason": finish.get(i, "stop"),
            }
            for i in range(self.choices)
        ]
        out = self._envelope(choices)
        out["usage"] = usage(Done(prompt_tokens, completion_tokens, cached_tokens=cached_tokens))
        return out

    def _choice(self, index: int, text: str, finish: str | None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse(self._envelope([choice]))

    async def sse(self, events: AsyncIterator[tuple[int, Any]], prompt_tokens: int) -> AsyncIterator[bytes]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        logprobs = [_Logprobs(len(echo)) for echo in self.echo]
        echoed = [not echo for echo in self.echo]
        completion_tokens = cached_tokens = 0
        try:
            async for _, event in events:
                if isinstance(event, Delta | ChoiceDone) and not echoed[event.index]:
                    echoed[event.index] = True
                    yield self._choice(event.index, self.echo[event.index], None)
                if isinstance(event, Delta):
                    added = logprobs[event.index].add(event.logprobs)
                    yield self._choice(event.index, event.text, None, added if self.body.logprobs is not None else None)
                elif isinstance(event, ChoiceDone):
                    yield self._choice(event.index, "", event.finish_reason)
                elif isinstance(event, Done):
                    completion_tokens += event.completion_tokens
                    cached_tokens += event.cached_tokens
            if include_usage:
                out = self._envelope([])
                out["usage"] = usage(Done(prompt_tokens, completion_tokens, cached_tokens=cached_tokens))
                yield sse(out)
        except MeshError as exc:
            yield sse(APIError.from_mesh(exc, 0).body())
        yield DONE
