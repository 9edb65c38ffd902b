"""What the generation endpoints (chat, completions) share: SSE framing, the first event as
the point of no return, cancelling on disconnect, usage, and OpenAI's logprob objects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import orjson
from fastapi import Request
from prometheus_client import Counter

from llmmesh.inference.v1 import inference_pb2
from services.common.errors import MeshError
from services.gateway.pipeline import Accepted, Done

TOKENS = Counter("llmmesh_gateway_tokens_total", "Tokens served, by kind.", ["kind"])
NO_RESULT = (grpc.StatusCode.INTERNAL, "the generation ended without a result")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Who answered: the agent the router chose and the model that took the request. Headers, so
# the JSON body stays exactly OpenAI's; for SSE they go out with the first event.
AGENT_HEADER = "X-Llmmesh-Agent"
SESSION_HEADER = "X-Session-Id"
RECALL_HEADER = "X-Llmmesh-Recall"
BACKEND_HEADER = "X-Llmmesh-Backend"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def first_event(events: AsyncIterator[Any]) -> Accepted:
    """The Accepted event: once it is here, the request is good and the stream may start."""
    first = await anext(events)
    if not isinstance(first, Accepted):
        raise MeshError(*NO_RESULT)
    return first


def decision_headers(accepted: Accepted) -> dict[str, str]:
    """The agent, backend and rate-limit headers of a request, from its Accepted event."""
    headers = {AGENT_HEADER: accepted.agent, BACKEND_HEADER: accepted.backend_model, **accepted.rate_limits}
    return {name: value for name, value in headers.items() if value}


async def unless_disconnected(request: Request, work: Any) -> Any:
    """Runs `work`, cancelling it (and so the engine request) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()


def usage(done: Done) -> dict[str, Any]:
    """OpenAI's usage object (and the token counters), with the prompt tokens the engine's
    prefix cache held in `prompt_tokens_details.cached_tokens`."""
    TOKENS.labels("prompt").inc(done.prompt_tokens)
    TOKENS.labels("completion").inc(done.completion_tokens)
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(logprobs: Sequence[inference_pb2.TokenLogprob]) -> list[dict[str, Any]]:
    """Chat's `logprobs.content` entries."""
    return [
        {**_token(p.token, p.logprob), "top_logprobs": [_token(t.token, t.logprob) for t in p.top]} for p in logprobs
    ]
