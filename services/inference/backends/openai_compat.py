"""The `openai-compatible` and `openai` kinds: any server speaking OpenAI's chat completions
(Ollama, another vLLM, LM Studio; or api.openai.com), through the official SDK's AsyncOpenAI.

The request always streams upstream, whatever the client asked: the registry must see the
first token to know the backend is answering, and the gateway assembles a non-streamed reply
from the stream as it does for the local engines. The SDK's own retries are off
(``max_retries=0``): trying again elsewhere is the registry's job.

Honoured: temperature, top_p, max_tokens (``max_completion_tokens`` for `openai`), stop, seed,
n, presence/frequency penalties, logprobs/top_logprobs, response_format (json_object,
json_schema), tools and tool_choice (passed through; the upstream parses its own tool calls).
Refused: what only the local tokenizer gives meaning to (see base.check_common).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import openai

from services.inference.backends.base import BackendUnavailableError, ExternalBackend, approx_tokens, sdk_error
from services.inference.backends.config import BackendConfig
from services.inference.domain import (
    ChoiceEnd,
    Delta,
    End,
    Event,
    GenerationJob,
    PromptLimits,
    Started,
    TokenLogprob,
    ToolCallPiece,
)


def sdk_timeout(config: BackendConfig) -> openai.Timeout:
    """Connect within connect_timeout_s; then no more than read_timeout_s between two reads
    (the wait for the first token is the registry's, first_token_timeout_s). Both SDKs take
    this (httpx2's) Timeout."""
    return openai.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)


def request_body(job: GenerationJob, upstream_model: str, messages: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The chat completion request for `job`, streamed, with usage in the last chunk."""
    sampling = job.sampling
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    optional = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        # OpenAI's newer models take only max_completion_tokens; other servers know max_tokens.
        "max_completion_tokens" if kind == "openai" else "max_tokens": sampling.max_tokens,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.n != 1:
        body["n"] = sampling.n
    if sampling.logprobs is not None:
        body["logprobs"] = True
        if sampling.logprobs:
            body["top_logprobs"] = sampling.logprobs
    if sampling.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": sampling.json_schema},
        }
    elif sampling.json_object:
        body["response_format"] = {"type": "json_object"}
    if job.tools:
        body["tools"] = job.tools
        if job.tool_choice == "function":
            body["tool_choice"] = {"type": "function", "function": {"name": job.tool_name}}
        elif job.tool_choice:
            body["tool_choice"] = job.tool_choice
        if job.single_tool_call:
            body["parallel_tool_calls"] = False
    return body


def _logprobs(choice: Any) -> list[TokenLogprob]:
    content = choice.logprobs.content if choice.logprobs is not None else None
    return [
        TokenLogprob(p.token, p.logprob, [(t.token, t.logprob) for t in p.top_logprobs or []]) for p in content or []
    ]


def _tool_pieces(delta: Any) -> list[ToolCallPiece]:
    pieces = []
    for call in delta.tool_calls or []:
        function = call.function
        name = (function.name if function else None) or ""
        arguments = (function.arguments if function else None) or ""
        pieces.append(ToolCallPiece(call.index, call.id or "", name, arguments))
    return pieces


class OpenAICompatBackend(ExternalBackend):
    def __init__(self, config: BackendConfig, limits: PromptLimits) -> None:
        super().__init__(config, limits)
        key = config.api_key()
        self._client = openai.AsyncOpenAI(
            # Given explicitly, so the SDK never falls back to OPENAI_API_KEY or OPENAI_BASE_URL.
            api_key=key.get_secret_value() if key else "no-key",
            base_url=config.url,
            max_retries=0,
            timeout=sdk_timeout(config),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def generate(self, job: GenerationJob, upstream_model: str) -> AsyncGenerator[Event, None]:
        fitted = self.fit(job)
        body = request_body(job, upstream_model, fitted.messages, self.kind)
        prompt_estimate = approx_tokens(fitted.messages)
        try:
            stream = await self._client.chat.completions.create(**body)
            # Leaving this block, however it is left (a cancelled request included), closes the
            # upstream HTTP stream.
            async with stream:
                yield Started(prompt_estimate, self.name, fitted.dropped_turns, fitted.memories_used)
                usage: Any = None
                chunks = 0
                open_choices = set(range(job.sampling.n))
                async for chunk in stream:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        pieces = _tool_pieces(choice.delta)
                        logprobs = _logprobs(choice) if job.sampling.logprobs is not None else []
                        if choice.delta.content or pieces or logprobs:
                            chunks += 1
                            yield Delta(choice.index, choice.delta.content or "", 1, pieces, logprobs)
                        if choice.finish_reason is not None:
                            open_choices.discard(choice.index)
                            yield ChoiceEnd(choice.index, choice.finish_reason)
        except openai.APIError as exc:
            raise sdk_error(self.name, exc, openai) from None
        if open_choices:  # the stream ended without saying why: never a silent truncation
            raise BackendUnavailableError(self.name, "the stream ended before the answer did")
        if usage is not None:
            details = getattr(usage, "prompt_tokens_details", None)
            cached = (details.cached_tokens or 0) if details is not None else 0
            yield End(usage.prompt_tokens, usage.completion_tokens, cached)
        else:
            yield End(prompt_estimate, chunks)
