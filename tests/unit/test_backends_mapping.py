"""From a generation job to each kind's request: messages, parameters honoured or refused,
upstream statuses, and history trimmed by estimate."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from services.common.errors import InvalidArgumentError, MeshError
from services.gateway.errors import APIError
from services.inference.backends import anthropic, openai_compat
from services.inference.backends.base import BackendUnavailableError, approx_tokens, fit_messages, status_error
from services.inference.backends.config import BackendConfig
from services.inference.domain import End, GenerationJob, PromptLimits, Sampling

COMPAT = BackendConfig(name="ollama", kind="openai-compatible", base_url="http://h/v1", models=["m"])
CLAUDE = BackendConfig(name="claude", kind="anthropic", api_key_env="K", models=["m"])


def job(**sampling: Any) -> GenerationJob:
    return GenerationJob(
        request_id="r",
        model="x/m",
        messages=[{"role": "user", "content": "hi"}],
        sampling=Sampling(**sampling),
    )


def test_openai_request_carries_what_the_client_set_and_nothing_else() -> None:
    request = job(temperature=0.5, max_tokens=7, stop=["\n"], seed=3, n=2, logprobs=2)
    body = openai_compat.request_body(request, "m", request.messages, "openai-compatible")
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "seed": 3,
        "max_tokens": 7,
        "stop": ["\n"],
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    assert "max_completion_tokens" in openai_compat.request_body(request, "m", request.messages, "openai")


def test_openai_request_passes_tools_and_structured_output_through() -> None:
    request = job(json_schema={"type": "object"})
    request.tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    request.tool_choice, request.tool_name, request.single_tool_call = "function", "f", True

    body = openai_compat.request_body(request, "m", request.messages, "openai")

    assert body["tools"] == request.tools
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"top_k": 3}, "top_k"),
        ({"min_p": 0.1}, "min_p"),
        ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"logit_bias": {5: 1.0}}, "logit_bias"),
        ({"ignore_eos": True}, "ignore_eos"),
    ],
)
def test_every_external_kind_refuses_local_tokenizer_parameters(change: dict[str, Any], param: str) -> None:
    for backend in (openai_compat.OpenAICompatBackend(COMPAT, PromptLimits()),):
        with pytest.raises(InvalidArgumentError) as raised:
            backend.check(job(**change))
        assert raised.value.param == param
    with pytest.raises(InvalidArgumentError) as raised:
        anthropic.check(job(**change), CLAUDE)
    assert raised.value.param == param


def test_a_raw_prompt_is_refused() -> None:
    request = job()
    request.prompt, request.messages = "once upon", []
    with pytest.raises(InvalidArgumentError, match="completions API"):
        anthropic.check(request, CLAUDE)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n": 2}, "n"),
        ({"seed": 1}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logprobs": 0}, "logprobs"),
        ({"json_object": True}, "response_format"),
        ({"temperature": 1.0}, "temperature"),
        ({"top_p": 0.9}, "top_p"),
    ],
)
def test_anthropic_refuses_what_the_messages_api_cannot_do(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        anthropic.check(job(**change), CLAUDE)
    assert raised.value.param == param
    assert "claude" in raised.value.message


def test_an_agents_defaults_are_left_out_where_a_clients_values_are_refused() -> None:
    """The agent's temperature (say 0.2 for a code reviewer) must not keep a turn off an
    anthropic fallback; the same value from the client is refused, never silently dropped."""
    from_agent = job(temperature=0.2, top_k=40)
    from_agent.defaulted = frozenset({"temperature", "top_k"})

    anthropic.check(from_agent, CLAUDE)  # no error
    body = anthropic.request_body(from_agent, "m", "", [{"role": "user", "content": "x"}], 99)
    assert "temperature" not in body
    with pytest.raises(InvalidArgumentError) as raised:
        anthropic.check(job(temperature=0.2), CLAUDE)
    assert raised.value.param == "temperature"


def test_anthropic_refuses_tools() -> None:
    request = job()
    request.tools = [{"type": "function", "function": {"name": "f"}}]
    with pytest.raises(InvalidArgumentError) as raised:
        anthropic.check(request, CLAUDE)
    assert raised.value.param == "tools"


def test_anthropic_messages_take_the_system_prompt_out_and_alternate() -> None:
    system, turns = anthropic.to_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "system", "content": "You remember: c."},
            {"role": "user", "content": "d"},
            {"role": "user", "content": "e"},
        ]
    )
    assert system == "Be brief.\n\nYou remember: c."
    assert turns == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "d\n\ne"},
    ]
    with pytest.raises(InvalidArgumentError):
        anthropic.to_messages([{"role": "tool", "content": "42", "tool_call_id": "c1"}])


def test_anthropic_request_has_max_tokens_always_and_stop_sequences() -> None:
    body = anthropic.request_body(
        job(stop=["END"], temperature=0.2), "m", "sys", [{"role": "user", "content": "x"}], 99
    )
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 99,
        "stream": True,
        "system": "sys",
        "stop_sequences": ["END"],
    }
    assert anthropic.request_body(job(max_tokens=5), "m", "", [], 99)["max_tokens"] == 5


@pytest.mark.parametrize(
    ("status", "fallback"), [(500, True), (502, True), (503, True), (429, True), (401, True), (404, True), (400, False)]
)
def test_upstream_statuses(status: int, fallback: bool) -> None:
    error = status_error("b", status, "This model's maximum context length is 10 tokens")
    assert isinstance(error, BackendUnavailableError) == fallback
    if not fallback:
        assert isinstance(error, InvalidArgumentError)
        assert error.reason == "context_length_exceeded"
        assert "`b`" in error.message


def test_history_is_trimmed_by_estimate_only_when_the_context_length_is_known() -> None:
    request = job(max_tokens=10)
    request.history = [[{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y" * 300}]] * 4

    whole = fit_messages(request, 0, PromptLimits())
    assert whole.dropped_turns == 0
    assert len(whole.messages) == 9

    trimmed = fit_messages(request, 300, PromptLimits())
    assert trimmed.dropped_turns > 0
    assert approx_tokens(trimmed.messages) <= 300 - 10


def test_the_gateway_answers_an_exhausted_chain_as_openais_503() -> None:
    error = MeshError(
        grpc.StatusCode.UNAVAILABLE, "No backend could answer the request; tried: a (HTTP 503).", "backends_unavailable"
    )
    api = APIError.from_mesh(error)
    assert api.status == 503
    assert api.body() == {
        "error": {
            "message": "No backend could answer the request; tried: a (HTTP 503).",
            "type": "service_unavailable",
            "param": None,
            "code": "backends_unavailable",
        }
    }


class _Stream:
    """An SDK stream of given events: async iterable and an async context manager."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def __aiter__(self) -> Any:
        for event in self.events:
            yield event


async def test_openai_cached_tokens_come_from_prompt_tokens_details() -> None:
    import openai as sdk

    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    events = [
        sdk.types.chat.ChatCompletionChunk.model_validate(
            {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
        ),
        sdk.types.chat.ChatCompletionChunk.model_validate(
            {
                **chunk,
                "choices": [],
                "usage": {
                    "prompt_tokens": 2000,
                    "completion_tokens": 1,
                    "total_tokens": 2001,
                    "prompt_tokens_details": {"cached_tokens": 1920},
                },
            }
        ),
    ]
    backend = openai_compat.OpenAICompatBackend(COMPAT, PromptLimits())

    async def create(**body: Any) -> _Stream:
        return _Stream(events)

    backend._client.chat.completions.create = create  # type: ignore[method-assign,assignment]
    end = [event async for event in backend.generate(job(), "m")][-1]
    assert isinstance(end, End)

    assert (end.prompt_tokens, end.completion_tokens, end.cached_tokens) == (2000, 1, 1920)


async def test_anthropic_cache_reads_are_cached_tokens_and_part_of_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    import anthropic as sdk

    monkeypatch.setenv("K", "key")
    message = {"id": "m", "type": "message", "role": "assistant", "model": "m", "content": []}
    usage = {"input_tokens": 10, "output_tokens": 0, "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 6}
    events = [
        sdk.types.RawMessageStartEvent.model_validate(
            {"type": "message_start", "message": {**message, "usage": usage}}
        ),
        sdk.types.RawContentBlockDeltaEvent.model_validate(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}
        ),
        sdk.types.RawMessageDeltaEvent.model_validate(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}
        ),
    ]
    backend = anthropic.AnthropicBackend(CLAUDE, PromptLimits())

    async def create(**body: Any) -> _Stream:
        return _Stream(events)

    backend._client.messages.create = create  # type: ignore[method-assign,assignment]
    end = [event async for event in backend.generate(job(), "m")][-1]
    assert isinstance(end, End)

    assert (end.prompt_tokens, end.completion_tokens, end.cached_tokens) == (1040, 1, 1024)
