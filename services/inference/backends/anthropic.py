"""The `anthropic` kind: Anthropic's Messages API through the official SDK's AsyncAnthropic.

OpenAI's chat becomes a Messages request: the system and developer messages (wherever they
stand: the agent's persona, recalled memories) are joined into the `system` prompt in their
order; consecutive messages of one role are merged, as the API wants turns to alternate;
`max_tokens`, which Anthropic requires, is the request's or the backend's
`default_max_tokens`. The stream's events become deltas: text deltas, the stop reason mapped
to OpenAI's finish reason, and the usage from `message_start` and `message_delta`.

Honoured: max_tokens, stop (stop_sequences). Refused, as the Messages API (version
2026-10-21, which the SDK speaks) has no equivalent: temperature and top_p (its sampling
parameters are gone: a request carrying one is a 400 even at the default value), n > 1, seed,
presence/frequency penalties, logprobs, response_format, tools and tool messages; and what
base.check_common refuses. Like the OpenAI kinds it always streams upstream and leaves
retries to the registry.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic

from services.common.errors import InvalidArgumentError
from services.inference.backends.base import (
    BackendUnavailableError,
    ExternalBackend,
    approx_tokens,
    check_common,
    refuse,
    sdk_error,
)
from services.inference.backends.config import BackendConfig
from services.inference.backends.openai_compat import sdk_timeout
from services.inference.domain import ChoiceEnd, Delta, End, Event, GenerationJob, PromptLimits, Started

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def to_messages(chat: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, alternating user/assistant messages) for an OpenAI chat."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in chat:
        role, content = message.get("role"), str(message.get("content") or "")
        if role in ("system", "developer"):
            system.append(content)
        elif role in ("user", "assistant") and not message.get("tool_calls"):
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += "\n\n" + content
            else:
                turns.append({"role": role, "content": content})
        else:
            raise InvalidArgumentError("tool calls and tool results cannot be sent to an anthropic backend", "messages")
    return "\n\n".join(s for s in system if s), turns


def check(job: GenerationJob, config: BackendConfig) -> None:
    check_common(job, config)
    sampling = job.sampling
    if sampling.n != 1:
        raise refuse("n", config, ": one choice per request")
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "logprobs"):
        if job.asked(name):  # an agent's default is left out; a client's value is refused
            raise refuse(name, config)
    if sampling.json_schema is not None or sampling.json_object:
        raise refuse("response_format", config)
    if job.tools:
        raise refuse("tools", config)


def request_body(
    job: GenerationJob, upstream_model: str, system: str, turns: list[dict[str, Any]], default_max: int
) -> dict[str, Any]:
    sampling = job.sampling
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": turns,
        "max_tokens": sampling.max_tokens or default_max,
        "stream": True,
    }
    if system:
        body["system"] = system
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    return body


class AnthropicBackend(ExternalBackend):
    def __init__(self, config: BackendConfig, limits: PromptLimits) -> None:
        super().__init__(config, limits)
        key = config.api_key()
        self._client = anthropic.AsyncAnthropic(
            # Given explicitly, so the SDK never falls back to ANTHROPIC_API_KEY.
            api_key=key.get_secret_value() if key else "no-key",
            base_url=config.url,
            max_retries=0,
            timeout=sdk_timeout(config),
        )

    def check(self, job: GenerationJob) -> None:
        check(job, self.config)

    async def aclose(self) -> None:
        await self._client.close()

    async def generate(self, job: GenerationJob, upstream_model: str) -> AsyncGenerator[Event, None]:
        fitted = self.fit(job)
        system, turns = to_messages(fitted.messages)
        body = request_body(job, upstream_model, system, turns, self.config.default_max_tokens)
        prompt_tokens = approx_tokens(fitted.messages)
        completion_tokens = chunks = cached_tokens = 0
        finish = ""
        try:
            stream = await self._client.messages.create(**body)
            async with stream:  # closes the upstream HTTP stream however the block is left
                yield Started(prompt_tokens, self.name, fitted.dropped_turns, fitted.memories_used)
                async for event in stream:
                    if event.type == "message_start":
                        # Anthropic counts cache reads and writes apart from input_tokens; in
                        # OpenAI's usage they are part of the prompt, the reads its cached tokens.
                        usage = event.message.usage
                        cached_tokens = usage.cache_read_input_tokens or 0
                        prompt = usage.input_tokens + cached_tokens + (usage.cache_creation_input_tokens or 0)
                        prompt_tokens = prompt or prompt_tokens
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        if event.delta.text:
                            chunks += 1
                            yield Delta(0, event.delta.text, 1)
                    elif event.type == "message_delta":
                        finish = FINISH_REASONS.get(event.delta.stop_reason or "", "stop")
                        completion_tokens = event.usage.output_tokens
        except anthropic.APIError as exc:
            raise sdk_error(self.name, exc, anthropic) from None
        if not finish:  # the stream ended without a stop reason: never a silent truncation
            raise BackendUnavailableError(self.name, "the stream ended before the answer did")
        yield ChoiceEnd(0, finish)
        yield End(prompt_tokens, completion_tokens or chunks, cached_tokens)
