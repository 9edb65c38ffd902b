"""The chat pipeline every front end (REST, gRPC) runs:

    (memory.GetContext || router.Route) -> inference.Generate (bidi stream) -> answer
                                                                 └-> memory.Append, in the background

It yields domain events; the front ends only translate them to their wire formats. The turn
is stored after the answer is complete, off the response path, with retries (the append is
idempotent on the turn id): a client never waits for it, and never sees it fail.

The router's plan decides the agent and the models to try; the inference service walks those
candidates (fallback before the first token). The agent's memory policy is applied once both
calls are back: the context is read while the route is decided rather than after it (a turn
pays for the slower of the two, not their sum), and what the policy excludes is dropped — no
history and no storing for a stateless agent, no recalled memories for a history-only one.
An agent with retrieval on then gets the passages of its knowledge collection most relevant to
the new message in its system prompt (one more call, after the route: only such agents wait
for it; a collection that is missing or unreachable leaves the prompt as it was).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2
from llmmesh.memory.v1 import memory_pb2
from llmmesh.router.v1 import router_pb2
from services.common.context import call_metadata
from services.common.errors import MeshError, from_rpc_error
from services.gateway.clients import MeshClients
from services.gateway.placement import affinity_key
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

APPENDS = Counter(
    "llmmesh_gateway_memory_appends_total", "Turns handed to memory after the answer, by outcome.", ["outcome"]
)
KNOWLEDGE = Counter(
    "llmmesh_gateway_retrievals_total",
    "Knowledge searches for agents with retrieval on, by outcome (found, none, or the gRPC code).",
    ["outcome"],
)
# Passages asked for, and the similarity a passage needs: on a running handbook, related
# questions scored 0.46-0.66 and unrelated ones ("pasta recipe", "hello") at most 0.17.
KNOWLEDGE_TOP_K = 5
KNOWLEDGE_MIN_SCORE = 0.25


@dataclass
class ChatTurn:
    """One chat request, already validated and in proto types."""

    request_id: str
    tenant: str
    model: str
    messages: list[common_pb2.ChatMessage]
    sampling: common_pb2.SamplingParams
    session_id: str = ""
    tools_json: str = ""
    # OpenAI's `user`: the end user, for long-term memory across sessions.
    user: str = ""
    # "" / "auto", "none", "required" or "function" (then tool_name); see inference.proto.
    tool_choice: str = ""
    tool_name: str = ""
    single_tool_call: bool = False
    # The completions API: a raw prompt (text or token ids); no memory, no persona.
    prompt: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    # An agent to answer, named by the client (the x-llmmesh-agent header); "" lets the router choose.
    agent: str = ""
    # False once the agent's memory policy is stateless: the session is neither read nor stored.
    uses_memory: bool = True
    # False: the session is read but this turn is not stored (the Responses API's store=false).
    remember: bool = True
    started_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    # Unique per turn (the request id may repeat: clients may send their own).
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def raw_prompt(self) -> bool:
        return bool(self.prompt or self.prompt_ids)

    @property
    def latest_user_text(self) -> str:
        """The newest user message: what recall and retrieval search for ("" for none)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")

    @property
    def stateful(self) -> bool:
        """The turn reads and writes its session (until the agent's policy says otherwise)."""
        return bool(self.session_id) and self.uses_memory and not self.raw_prompt


@dataclass
class Accepted:
    """Sent first, once the engine took the request: what the pipeline decided."""

    agent: str
    backend_model: str
    prompt_tokens: int
    # Recall had to be skipped (long-term memory unreachable): the answer rests on the window.
    recall_skipped: bool = False
    # History turns left out of the prompt so it fits the model's context.
    dropped_turns: int = 0
    # The caller's x-ratelimit-* headers, set by the limits (limits.py).
    rate_limits: dict[str, str] = field(default_factory=dict)


@dataclass
class Delta:
    index: int
    text: str
    tokens: int = 0
    tool_calls: Sequence[inference_pb2.ToolCallDelta] = ()
    logprobs: Sequence[inference_pb2.TokenLogprob] = ()


@dataclass
class ChoiceDone:
    index: int
    finish_reason: str


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: dict[int, str] = field(default_factory=dict)
    cached_tokens: int = 0


Event = Accepted | Delta | ChoiceDone | Done


def _is_system(message: common_pb2.ChatMessage) -> bool:
    return message.role in ("system", "developer")


def assemble_prompt(
    system_prompt: str, new: list[common_pb2.ChatMessage], reference: str = ""
) -> list[common_pb2.ChatMessage]:
    """System first (the client's own, else the session's or agent's), then the new turn. The
    inference service puts the history and recalled memories between the two. `reference`
    (retrieved passages) ends the first system message: one system message, as every chat
    template accepts."""
    client_system = [m for m in new if _is_system(m)]
    rest = [m for m in new if not _is_system(m)]
    if client_system:
        system = [common_pb2.ChatMessage() for _ in client_system]
        for copy, original in zip(system, client_system, strict=True):
            copy.CopyFrom(original)  # the client's own messages are not changed in place
    elif system_prompt or reference:
        system = [common_pb2.ChatMessage(role="system", content=system_prompt)]
    else:
        system = []
    if reference:
        system[0].content = f"{system[0].content}\n\n{reference}".lstrip()
    return [*system, *rest]


def reference_block(passages: Sequence[memory_pb2.KnowledgePassage]) -> str:
    """Retrieved passages as they go into the system prompt, best first, each under its document."""
    if not passages:
        return ""
    body = "\n\n".join(f"[{p.document}]\n{p.text}" for p in passages)
    return (
        "Reference passages from the knowledge base (use them where they answer the question; "
        f"say so if they do not cover it):\n\n{body}"
    )


def memory_line(memory: memory_pb2.Memory) -> str:
    speaker = "The user said" if memory.role == "user" else "You said"
    return f"{speaker}: {memory.text}"


def window_after_trim(window: list[memory_pb2.Turn], dropped: int) -> int:
    """The first seq of the short-term window once `dropped` oldest turns left the prompt."""
    if dropped <= 0 or not window:
        return 0
    if dropped < len(window):
        return int(window[dropped].seq)
    return int(window[-1].seq) + 1


def merge_tool_calls(calls: dict[int, dict[str, Any]], pieces: Sequence[inference_pb2.ToolCallDelta]) -> None:
    """Adds streamed tool-call pieces to whole calls in OpenAI's message shape, by call index."""
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if piece.id:
            call["id"] = piece.id
        if piece.name:
            call["function"]["name"] = piece.name
        call["function"]["arguments"] += piece.arguments


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    )


class ChatPipeline:
    def __init__(self, settings: GatewaySettings, clients: MeshClients) -> None:
        self._settings = settings
        self._clients = clients
        self._appends: set[asyncio.Task[None]] = set()
        # The newest append per (tenant, session): the session's next turn waits for it, so a
        # client that answers at once still finds its previous turn in the history.
        self._last_append: dict[tuple[str, str], asyncio.Task[None]] = {}

    @property
    def pending_appends(self) -> int:
        """Finished turns still being stored."""
        return len(self._appends)

    async def drain(self, timeout_s: float | None = None) -> None:
        """Waits for the turns still being stored."""
        if self._appends:
            await asyncio.wait(set(self._appends), timeout=timeout_s)

    async def close(self) -> None:
        """Lets the turns still being stored finish (bounded), then closes the channels."""
        await self.drain(self._settings.append_retry_s)
        await self._clients.close()

    async def stored(self, tenant: str, session_id: str) -> None:
        """Waits (bounded) until this replica's newest turn of the session is stored."""
        previous = self._last_append.get((tenant, session_id))
        if previous is not None and not previous.done():
            await asyncio.wait({previous}, timeout=self._settings.append_retry_s)

    async def list_models(self) -> list[router_pb2.Model]:
        try:
            reply = await self._clients.router.ListModels(
                router_pb2.ListModelsRequest(), timeout=self._settings.upstream_timeout_s, metadata=call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return list(reply.models)

    async def _context(self, turn: ChatTurn) -> memory_pb2.GetContextResponse:
        if not turn.stateful:
            return memory_pb2.GetContextResponse()
        previous = self._last_append.get((turn.tenant, turn.session_id))
        if previous is not None and not previous.done():
            await asyncio.wait({previous}, timeout=self._settings.upstream_timeout_s)
        query = turn.latest_user_text
        reply: memory_pb2.GetContextResponse = await self._clients.memory.GetContext(
            memory_pb2.GetContextRequest(tenant=turn.tenant, session_id=turn.session_id, user=turn.user, query=query),
            timeout=self._settings.upstream_timeout_s,
            metadata=call_metadata(),
        )
        return reply

    async def _knowledge(self, turn: ChatTurn, retrieval: router_pb2.Retrieval) -> str:
        """The agent's passages for the new message; "" when retrieval is off, the collection
        does not exist (yet) or memory cannot answer: the turn is answered without them."""
        query = turn.latest_user_text
        if not retrieval.enabled or not retrieval.collection or not query.strip() or turn.raw_prompt:
            return ""
        request = memory_pb2.SearchKnowledgeRequest(
            tenant=turn.tenant,
            collection=retrieval.collection,
            query=query,
            top_k=KNOWLEDGE_TOP_K,
            max_tokens=retrieval.max_tokens,
            min_score=KNOWLEDGE_MIN_SCORE,
        )
        try:
            reply = await self._clients.memory.SearchKnowledge(
                request, timeout=self._settings.upstream_timeout_s, metadata=call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            KNOWLEDGE.labels(exc.code().name.lower()).inc()
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("retrieval skipped", extra={"collection": retrieval.collection, "code": exc.code().name})
            return ""
        KNOWLEDGE.labels("found" if reply.passages else "none").inc()
        return reference_block(reply.passages)

    async def _route(self, turn: ChatTurn) -> router_pb2.RouteResponse:
        reply: router_pb2.RouteResponse = await self._clients.router.Route(
            router_pb2.RouteRequest(model=turn.model, messages=turn.messages, tenant=turn.tenant, agent=turn.agent),
            timeout=self._settings.upstream_timeout_s,
            metadata=call_metadata(),
        )
        return reply

    async def run(self, turn: ChatTurn) -> AsyncIterator[Event]:
        """Runs one turn. A bad request raises MeshError before the first event (Accepted);
        cancelling the consumer cancels the engine request (and the turn is not stored)."""
        try:
            async with asyncio.TaskGroup() as group:
                context_call = group.create_task(self._context(turn))
                route_call = group.create_task(self._route(turn))
        except* grpc.aio.AioRpcError as failures:
            raise from_rpc_error(failures.exceptions[0]) from None
        context, route = context_call.result(), route_call.result()
        policy = route.agent.memory_policy
        if policy == router_pb2.MEMORY_POLICY_STATELESS:
            turn.uses_memory = False
            context = memory_pb2.GetContextResponse()
        elif policy == router_pb2.MEMORY_POLICY_HISTORY:
            del context.recalled[:]
            context.recall_skipped = False

        system_prompt = context.session.system_prompt or route.agent.system_prompt
        reference = await self._knowledge(turn, route.agent.retrieval)
        start = inference_pb2.StartGeneration(
            request_id=turn.request_id,
            model=route.backend_model,
            candidates=route.candidates[1:],
            # The session's turns go back to the replica and engine that cache its prefix.
            affinity_key=affinity_key(turn.tenant, turn.session_id),
            messages=[] if turn.raw_prompt else assemble_prompt(system_prompt, turn.messages, reference),
            prompt=turn.prompt,
            prompt_ids=turn.prompt_ids,
            # Apart, not merged: a backend may leave out an agent's default it cannot honour,
            # never a value the client asked for.
            sampling=turn.sampling,
            sampling_defaults=route.agent.sampling_defaults,
            tools_json=turn.tools_json,
            tool_choice=turn.tool_choice,
            tool_name=turn.tool_name,
            single_tool_call=turn.single_tool_call,
            history=[inference_pb2.HistoryTurn(seq=t.seq, messages=t.messages) for t in context.window],
            memories=[memory_line(m) for m in context.recalled],
        )
        texts: dict[int, list[str]] = {}
        calls: dict[int, dict[str, Any]] = {}  # choice 0's tool calls, for the history
        finish: dict[int, str] = {}
        dropped = 0
        call = self._clients.placement.pick(start.affinity_key).Generate(metadata=call_metadata())
        try:
            await call.write(inference_pb2.GenerateRequest(start=start))
            async for reply in call:
                kind = reply.WhichOneof("event")
                if kind == "started":
                    dropped = reply.started.dropped_turns
                    yield Accepted(
                        route.agent.name,
                        reply.started.backend_model or route.backend_model,
                        reply.started.prompt_tokens,
                        context.recall_skipped,
                        dropped,
                    )
                elif kind == "delta":
                    delta = reply.delta
                    texts.setdefault(delta.index, []).append(delta.text)
                    if delta.index == 0:
                        merge_tool_calls(calls, delta.tool_calls)
                    yield Delta(delta.index, delta.text, delta.tokens, delta.tool_calls, delta.logprobs)
                elif kind == "choice_end":
                    finish[reply.choice_end.index] = reply.choice_end.finish_reason
                    yield ChoiceDone(reply.choice_end.index, reply.choice_end.finish_reason)
                elif kind == "end":
                    if not reply.end.cancelled and finish.get(0) != "abort":
                        reply_message = common_pb2.ChatMessage(role="assistant", content="".join(texts.get(0, [])))
                        if calls:
                            reply_message.tool_calls_json = json.dumps([calls[i] for i in sorted(calls)])
                        self._remember(turn, reply_message, window_after_trim(list(context.window), dropped))
                    usage = reply.end.usage
                    yield Done(usage.prompt_tokens, usage.completion_tokens, finish, usage.cached_tokens)
                    return
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # no-op when finished; aborts the engine request otherwise
        raise MeshError(grpc.StatusCode.INTERNAL, "inference stream ended without a result")

    def _remember(self, turn: ChatTurn, reply: common_pb2.ChatMessage, window_start: int) -> None:
        """Stores the finished turn in the background; the answer does not wait for it."""
        if not turn.stateful or not turn.remember:
            return
        new = [m for m in turn.messages if not _is_system(m)]
        new.append(reply)
        request = memory_pb2.AppendRequest(
            tenant=turn.tenant,
            session_id=turn.session_id,
            turn_id=turn.turn_id,
            messages=new,
            user=turn.user,
            started_at_ms=turn.started_at_ms,
            window_start=window_start,
        )
        task = asyncio.create_task(self._append(request))
        self._appends.add(task)
        key = (turn.tenant, turn.session_id)
        self._last_append[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            self._appends.discard(done)
            if self._last_append.get(key) is done:
                del self._last_append[key]

        task.add_done_callback(forget)

    async def _append(self, request: memory_pb2.AppendRequest) -> None:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
                stop=stop_after_delay(self._settings.append_retry_s),
                reraise=True,
            ):
                with attempt:
                    await self._clients.memory.Append(
                        request, timeout=self._settings.upstream_timeout_s, metadata=call_metadata()
                    )
            APPENDS.labels("stored").inc()
        except grpc.aio.AioRpcError as exc:
            outcome = "session_deleted" if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else "failed"
            APPENDS.labels(outcome).inc()
            log.warning(
                "turn not stored",
                extra={"session_id": request.session_id, "turn_id": request.turn_id, "code": exc.code().name},
            )
