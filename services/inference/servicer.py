"""InferenceService RPCs; proto <-> domain mapping lives here.

Generation goes through the backend registry (backends/registry.py): the requested model, or
the first of its candidates that answers, local or external.

``Generate`` is bidirectional: the first client message starts the generation, a later
``cancel`` message stops it, and the client going away cancels this handler — in every case
the task pumping the engine is cancelled, which aborts the request inside vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.errors import InvalidArgumentError, MeshError
from services.common.messages import defaulted_fields, merge_sampling, to_openai
from services.inference.backends.cooldown import Cooldowns
from services.inference.backends.registry import BackendRegistry, local_kind
from services.inference.domain import (
    Backend,
    ChoiceEnd,
    Delta,
    Event,
    GenerationJob,
    Sampling,
    Started,
    parse_schema,
)
from services.inference.embedder import Embedder

log = logging.getLogger(__name__)

_CANCEL = object()  # queue marker: the client asked to stop
_FINISHED = object()  # queue marker: the engine stream is over


def to_sampling(params: common_pb2.SamplingParams) -> Sampling:
    def opt(name: str) -> Any:
        return getattr(params, name) if params.HasField(name) else None

    return Sampling(
        temperature=opt("temperature"),
        top_p=opt("top_p"),
        max_tokens=opt("max_tokens"),
        seed=opt("seed"),
        stop=list(params.stop),
        n=params.n or 1,
        presence_penalty=opt("presence_penalty"),
        frequency_penalty=opt("frequency_penalty"),
        json_schema=parse_schema(params.json_schema),
        json_object=params.json_object,
        ignore_eos=params.ignore_eos,
        top_k=opt("top_k"),
        min_p=opt("min_p"),
        repetition_penalty=opt("repetition_penalty"),
        logit_bias=dict(params.logit_bias),
        logprobs=opt("logprobs"),
    )


def to_job(start: inference_pb2.StartGeneration) -> GenerationJob:
    raw_prompt = bool(start.prompt or start.prompt_ids)
    if raw_prompt == bool(start.messages):
        raise InvalidArgumentError("exactly one of messages and prompt must be given", "messages")
    if start.completion_reserve < 0:
        raise InvalidArgumentError("completion_reserve must not be negative")
    return GenerationJob(
        request_id=start.request_id or "anonymous",
        model=start.model,
        messages=[to_openai(m) for m in start.messages],
        sampling=to_sampling(merge_sampling(start.sampling, start.sampling_defaults)),
        defaulted=defaulted_fields(start.sampling, start.sampling_defaults),
        tools=json.loads(start.tools_json) if start.tools_json else None,
        history=[[to_openai(m) for m in turn.messages] for turn in start.history],
        memories=list(start.memories),
        completion_reserve=start.completion_reserve,
        tool_choice=start.tool_choice,
        tool_name=start.tool_name,
        single_tool_call=start.single_tool_call,
        prompt=start.prompt,
        prompt_ids=list(start.prompt_ids),
        candidates=list(start.candidates),
        affinity_key=start.affinity_key,
    )


def _end(
    prompt_tokens: int, completion_tokens: int, cancelled: bool = False, cached_tokens: int = 0
) -> inference_pb2.GenerateResponse:
    usage = common_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        cached_tokens=cached_tokens,
    )
    return inference_pb2.GenerateResponse(end=inference_pb2.GenerationEnd(usage=usage, cancelled=cancelled))


def to_response(event: Event) -> inference_pb2.GenerateResponse:
    if isinstance(event, Delta):
        return inference_pb2.GenerateResponse(
            delta=inference_pb2.TextDelta(
                index=event.index,
                text=event.text,
                tokens=event.tokens,
                tool_calls=[
                    inference_pb2.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
                    for c in event.tool_calls
                ],
                logprobs=[
                    inference_pb2.TokenLogprob(
                        token=p.token,
                        logprob=p.logprob,
                        top=[inference_pb2.TopLogprob(token=t, logprob=lp) for t, lp in p.top],
                    )
                    for p in event.logprobs
                ],
            )
        )
    if isinstance(event, Started):
        return inference_pb2.GenerateResponse(
            started=inference_pb2.GenerationStarted(
                prompt_tokens=event.prompt_tokens,
                engine=event.engine,
                dropped_turns=event.dropped_turns,
                memories_used=event.memories_used,
                backend_model=event.backend_model,
                tried=event.tried,
            )
        )
    if isinstance(event, ChoiceEnd):
        return inference_pb2.GenerateResponse(
            choice_end=inference_pb2.ChoiceEnd(index=event.index, finish_reason=event.finish_reason)
        )
    return _end(event.prompt_tokens, event.completion_tokens, cached_tokens=event.cached_tokens)


class _Outbox:
    """What a stream's writer is handed, in order: the engine's events, then _FINISHED, or
    _CANCEL from the client. Anything but a delta ends a delta's hold at once: a choice's last
    tokens are not held back behind its end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._urgent = asyncio.Event()

    def put(self, item: Any) -> None:
        self.queue.put_nowait(item)
        if not isinstance(item, Delta):
            self._urgent.set()

    async def hold(self, seconds: float) -> None:
        """Waits `seconds`, or until something other than a delta is put."""
        if self._urgent.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._urgent.wait()


def _coalesce(first: Delta, queue: asyncio.Queue[Any]) -> tuple[Delta, Any]:
    """Merges the deltas of the same choice already waiting in the queue into one message.

    At engine speed the queue holds one delta and it goes out at once; when the client side
    is slower than the engine, one message carries several tokens instead of queueing them.
    Returns the merged delta and the first item that did not merge (or None)."""
    texts, tokens, calls, logprobs = [first.text], first.tokens, list(first.tool_calls), list(first.logprobs)
    while True:
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return Delta(first.index, "".join(texts), tokens, calls, logprobs), None
        # Text after a tool-call piece stays a message of its own, so the order holds.
        if not (isinstance(item, Delta) and item.index == first.index) or (calls and item.text):
            return Delta(first.index, "".join(texts), tokens, calls, logprobs), item
        texts.append(item.text)
        tokens += item.tokens
        calls.extend(item.tool_calls)
        logprobs.extend(item.logprobs)


MAX_EMBED_TEXTS = 2048


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, pool: Backend, embedder: Embedder | None = None, stream_interval_s: float = 0.0) -> None:
        """`pool`: the registry, or one backend alone (served as the registry of just it).
        `stream_interval_s`: a delta that comes sooner than this after the stream's last message
        waits out the rest of the interval and goes out with whatever followed it (0: never held)."""
        if not isinstance(pool, BackendRegistry):
            pool = BackendRegistry(pool, local_kind(pool), [], Cooldowns(failures=3, cooldown_s=30.0))
        self._pool = pool
        self._embedder = embedder
        self._stream_interval_s = stream_interval_s

    async def Embed(
        self, request: inference_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.EmbedResponse:
        embedder = self._embedder
        if embedder is None:
            raise MeshError(grpc.StatusCode.UNIMPLEMENTED, "this inference service serves no embedding model")
        if len(request.texts) > MAX_EMBED_TEXTS:
            raise MeshError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {MAX_EMBED_TEXTS} texts per call",
                "invalid_request_error",
            )
        vectors, tokens = await embedder.aembed(list(request.texts), background=request.background)
        return inference_pb2.EmbedResponse(
            embeddings=[inference_pb2.Embedding(values=v) for v in vectors],
            model=embedder.name,
            dimensions=embedder.dimensions,
            prompt_tokens=tokens,
        )

    async def Generate(
        self, request_iterator: AsyncIterator[inference_pb2.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("action") != "start":
            raise MeshError(grpc.StatusCode.INVALID_ARGUMENT, "the first message must start a generation")
        job = to_job(first.start)
        events = self._pool.generate(job)
        # Pull the first event here so a bad request fails the call before anything streams.
        head = await anext(events)
        assert isinstance(head, Started)
        outbox = _Outbox()
        pump = asyncio.create_task(self._pump(events, outbox))
        watch = asyncio.create_task(self._watch_cancel(request_iterator, outbox))
        completion_tokens = 0
        pending: Any = None
        loop = asyncio.get_running_loop()
        sent_at = -math.inf
        try:
            yield to_response(head)
            while True:
                if pending is not None:
                    item, pending = pending, None
                else:
                    item = await outbox.queue.get()
                    # A fast stream's deltas go out at most once per interval, several tokens a
                    # message; the first, and any after a pause as long, go out at once.
                    hold = sent_at + self._stream_interval_s - loop.time()
                    if isinstance(item, Delta) and hold > 0:
                        await outbox.hold(hold)
                if item is _FINISHED:
                    pump.result()  # re-raise an engine failure
                    return
                if item is _CANCEL:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                    log.info("generation cancelled by the client")
                    yield _end(head.prompt_tokens, completion_tokens, cancelled=True)
                    return
                if isinstance(item, Delta):
                    item, pending = _coalesce(item, outbox.queue)
                    completion_tokens += item.tokens
                    sent_at = loop.time()
                yield to_response(item)
        finally:
            pump.cancel()  # the client went away: aborts the engine request
            watch.cancel()

    @staticmethod
    async def _pump(events: AsyncIterator[Event], outbox: _Outbox) -> None:
        try:
            async for event in events:
                outbox.put(event)
        finally:
            outbox.put(_FINISHED)

    @staticmethod
    async def _watch_cancel(request_iterator: AsyncIterator[inference_pb2.GenerateRequest], outbox: _Outbox) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for message in request_iterator:
                if message.WhichOneof("action") == "cancel":
                    outbox.put(_CANCEL)
                    return

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(
            models=[
                inference_pb2.ModelInfo(
                    id=m.id,
                    context_length=m.context_length,
                    source=m.source,
                    engines=m.engines,
                    backend=m.backend,
                    kind=m.kind,
                    created=m.created,
                )
                for m in self._pool.models()
            ]
        )

    async def CountTokens(
        self, request: inference_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        count = await self._pool.count_tokens(request.model, [to_openai(m) for m in request.messages])
        return inference_pb2.CountTokensResponse(
            prompt_tokens=count, context_length=self._pool.context_length_of(request.model)
        )

    async def GetLoad(
        self, request: inference_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetLoadResponse:
        return inference_pb2.GetLoadResponse(
            engines=[
                inference_pb2.EngineLoad(
                    engine=f.engine,
                    model=f.model,
                    device=f.device,
                    running=f.running,
                    waiting=f.waiting,
                    kv_cache_usage=f.kv_cache_usage,
                    outstanding=f.outstanding,
                    max_num_seqs=f.max_num_seqs,
                    prefix_cache_queries=f.prefix_cache_queries,
                    prefix_cache_hits=f.prefix_cache_hits,
                )
                for f in self._pool.load()
            ]
        )
