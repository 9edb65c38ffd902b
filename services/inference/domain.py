"""The inference service's own vocabulary, below every adapter: a generation job in
(``GenerationJob``, ``Sampling``), its events out (``Started``/``Delta``/``ChoiceEnd``/``End``),
what a backend is (``Backend``), and how a chat is fitted to a context. The vLLM engines
(engine.py), the instant backend and the external backends (backends/) all speak it; none of
them is imported here, so an adapter never pulls in another one (pyproject.toml's import
contracts keep it so).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from services.common import placement
from services.common.errors import InvalidArgumentError, MeshError
from services.inference.context import FittedPrompt, fit_prompt


@dataclass
class ToolCallPiece:
    """A piece of one tool call, in OpenAI's streaming shape (see inference.proto)."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    ignore_eos: bool = False
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    # None: no log probabilities; k: the sampled token's and the k most likely at each position.
    logprobs: int | None = None
    # Structured output without optional whitespace (tool calls: fewer tokens, same JSON).
    compact_json: bool = False


@dataclass
class GenerationJob:
    request_id: str
    model: str
    messages: list[dict[str, Any]]
    sampling: Sampling
    tools: list[dict[str, Any]] | None = None
    # Server-held turns (oldest first) the prompt may drop to fit, and recalled memories.
    history: list[list[dict[str, Any]]] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    # Tokens kept for the completion when trimming without max_tokens; 0: the service default.
    completion_reserve: int = 0
    # "" / "auto", "none", "required" or "function" (then tool_name); see tools.py.
    tool_choice: str = ""
    tool_name: str = ""
    single_tool_call: bool = False
    # The completions API: a raw prompt (text or token ids) instead of messages.
    prompt: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    # Model ids to try, in order, when `model` fails before its first token (backends/registry.py).
    candidates: list[str] = field(default_factory=list)
    # The conversation this continues, hashed (inference.proto); "" for none.
    affinity_key: str = ""
    # Sampling fields set by the agent's defaults alone: a backend that cannot honour one
    # leaves it out instead of refusing the request.
    defaulted: frozenset[str] = frozenset()

    def asked(self, name: str) -> bool:
        """The sampling field `name` is set, and by the client (not by an agent's default)."""
        value = getattr(self.sampling, name)
        unset = value is None or value is False or value == {} or value == []  # 0 is a value
        return not unset and name not in self.defaulted

    @property
    def raw_prompt(self) -> bool:
        return bool(self.prompt or self.prompt_ids)


@dataclass
class Started:
    prompt_tokens: int
    engine: str
    dropped_turns: int = 0
    memories_used: int = 0
    # Set by the backend registry: the model id that answers, and those tried before it.
    backend_model: str = ""
    tried: list[str] = field(default_factory=list)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    # The most likely tokens at this position, best first: (token, logprob).
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Delta:
    index: int
    text: str
    tokens: int
    tool_calls: list[ToolCallPiece] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # The engine's token ids of `text` (tool parsers may read them); not sent on.
    token_ids: Sequence[int] = ()


@dataclass
class ChoiceEnd:
    index: int
    finish_reason: str


@dataclass
class End:
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens the engine found in its prefix cache (part of prompt_tokens).
    cached_tokens: int = 0


Event = Started | Delta | ChoiceEnd | End


@dataclass
class LoadFigures:
    engine: str
    model: str
    device: str
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    outstanding: int = 0
    max_num_seqs: int = 0
    # Prompt tokens looked up in the prefix cache since start, and those found there.
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    # time.monotonic() of the engine's last report (0: none yet).
    reported_at: float = 0.0

    def now(self, stale_s: float = placement.STALE_S) -> LoadFigures:
        """The figures as of now: an engine that reported nothing for `stale_s` ran no step in
        that time, so nothing runs or waits in it, and its KV cache holds no running request."""
        if time.monotonic() - self.reported_at <= stale_s:
            return self
        return dataclasses.replace(self, running=0, waiting=0, kv_cache_usage=0.0)

    def placement_load(self) -> placement.Load:
        now = self.now()
        return placement.Load.of(now.outstanding, now.waiting, now.kv_cache_usage, now.max_num_seqs)


class Backend(Protocol):
    """What the servicer needs of whatever generates: the vLLM engine pool, or the
    benchmark-only instant backend."""

    model_name: str

    @property
    def kind(self) -> str:
        """What the local backend is, as the model list names it: "vllm" or "instant"."""
        ...

    @property
    def source(self) -> str: ...

    @property
    def engine_count(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    async def count_tokens(self, model: str, messages: list[dict[str, Any]]) -> int: ...

    def generate(self, job: GenerationJob) -> AsyncIterator[Event]: ...

    def load(self) -> list[LoadFigures]: ...

    def shutdown(self) -> None: ...


def unknown_model_error(model: str) -> MeshError:
    return MeshError(grpc.StatusCode.NOT_FOUND, f"The model `{model}` does not exist.", "model_not_found")


def context_length_error(prompt_tokens: int, max_tokens: int | None, limit: int) -> MeshError:
    wanted = prompt_tokens + (max_tokens or 0)
    detail = f"{prompt_tokens} in the messages" + (f", {max_tokens} in the completion" if max_tokens else "")
    return MeshError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"This model's maximum context length is {limit} tokens. However, you requested {wanted} tokens ({detail}). "
        "Please reduce the length of the messages or completion.",
        "context_length_exceeded",
    )


@dataclass(frozen=True)
class PromptLimits:
    """How a prompt is fitted: the completion's share when the client set no max_tokens, and
    the cap on recalled memories."""

    completion_reserve: int = 512
    memory_cap_tokens: int = 256
    tool_parser: str = "hermes"


def fit_job(
    job: GenerationJob,
    encode: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], list[int]],
    count_text: Callable[[str], int],
    context_length: int,
    limits: PromptLimits,
) -> FittedPrompt:
    """The job's prompt, with history trimmed to fit (see services/inference/context.py)."""
    reserve = job.sampling.max_tokens or job.completion_reserve or limits.completion_reserve
    return fit_prompt(
        lambda chat: encode(chat, job.tools),
        count_text,
        job.messages,
        job.history,
        job.memories,
        budget=max(1, context_length - reserve),
        memory_cap_tokens=limits.memory_cap_tokens,
    )


def parse_schema(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"json_schema is not valid JSON: {exc}", "response_format.json_schema.schema"
        ) from exc
    if not isinstance(schema, dict):
        raise InvalidArgumentError("json_schema must be a JSON object", "response_format.json_schema.schema")
    return schema
