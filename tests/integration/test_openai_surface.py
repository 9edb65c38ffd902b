"""The OpenAI parameters and endpoints with the official SDK through Envoy, on the real model:
forced and auto tool calls (JSON and SSE), a tool-result round trip, logprobs, logit_bias,
json_schema, the sampling extras, and /v1/completions. The model is tiny: the assertions hold
for any output it may give (valid calls, schemas, shapes), never for its wording."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jsonschema
import openai
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)


def _valid_call(name: str, arguments: str) -> dict[str, Any]:
    args: dict[str, Any] = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_a_named_tool_choice_returns_a_valid_call(client: openai.OpenAI) -> None:
    choice: Any = {"type": "function", "function": {"name": "get_weather"}}

    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=48
    )

    message = reply.choices[0].message
    (call,) = message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    _valid_call("get_weather", call.function.arguments)
    assert message.content is None


def test_a_required_tool_choice_streams_delta_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=64,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += piece.id or ""
                call["name"] += (piece.function and piece.function.name) or ""
                call["arguments"] += (piece.function and piece.function.arguments) or ""
            finish = choice.finish_reason or finish

    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"]
    _valid_call(calls[0]["name"], calls[0]["arguments"])


def test_auto_answers_with_text_or_valid_calls_and_a_tool_result_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], temperature=0, max_tokens=48
    )
    auto = first.choices[0]
    assert auto.message.content or auto.message.tool_calls
    for made in auto.message.tool_calls or []:
        assert made.type == "function"
        _valid_call(made.function.name, made.function.arguments)
    assert auto.finish_reason == "tool_calls" if auto.message.tool_calls else auto.finish_reason in ("stop", "length")

    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    asked = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice=forced, temperature=0, max_tokens=48
    )
    call = (asked.choices[0].message.tool_calls or [])[0]
    history: Any = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21, "sky": "clear"})},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=24
    )

    assert answer.choices[0].message.content
    assert answer.choices[0].message.tool_calls is None


def test_logprobs_with_top_alternatives(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )

    entries = (reply.choices[0].logprobs and reply.choices[0].logprobs.content) or []
    assert len(entries) == reply.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy decoding: the sampled token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token


def test_logit_bias_bans_a_token(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=3, logprobs=True, top_logprobs=1
    )
    first = (plain.choices[0].logprobs.content or [])[0].token  # type: ignore[union-attr]
    from transformers import AutoTokenizer

    from services.inference.model_store import prepare_default_model
    from services.inference.settings import InferenceSettings

    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model(InferenceSettings().cache_dir))
    ids = tokenizer.encode(first, add_special_tokens=False)
    assert len(ids) == 1, f"{first!r} is not one token"
    banned = ids[0]

    biased = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=3,
        logprobs=True,
        logit_bias={str(banned): -100},
    )

    assert (biased.choices[0].logprobs.content or [])[0].token != first  # type: ignore[union-attr]


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }

    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a big city and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        temperature=0,
        max_tokens=48,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )

    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


def test_completions_json_and_stream(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt=["The capital of France is", "1, 2, 3,"], max_tokens=4)

    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.text for c in reply.choices)
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 8

    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0, stream=True, logprobs=1
    )
    streamed = ""
    for chunk in stream:
        streamed += "".join(c.text for c in chunk.choices)
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0)

    assert streamed == whole.choices[0].text


def test_n_seed_stop_max_completion_tokens_and_penalties(client: openai.OpenAI) -> None:
    def ask(**extra: Any) -> Any:
        return client.chat.completions.create(model=MODEL, messages=QUESTION, **extra)

    sampled = [ask(n=2, seed=7, temperature=1.0, max_tokens=8) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    assert len(sampled[0].choices) == 2

    greedy = ask(temperature=0, max_tokens=24, user="surface-test-user").choices[0].message.content or ""
    word = greedy.split()[2]
    stopped = ask(temperature=0, max_tokens=24, stop=[word]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == greedy[: greedy.index(word)]

    short = ask(temperature=0, max_completion_tokens=3)
    assert short.usage is not None
    assert short.usage.completion_tokens == 3
    assert short.choices[0].finish_reason == "length"

    # The client's own system message (the model's default one) instead of the default agent's
    # persona, with which this small model answers in one short line that no penalty changes.
    repeat: Any = [
        {"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
        {"role": "user", "content": "Say the word cat twenty times."},
    ]
    plain = client.chat.completions.create(model=MODEL, messages=repeat, temperature=0, max_tokens=24)
    penalised = client.chat.completions.create(
        model=MODEL, messages=repeat, temperature=0, max_tokens=24, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert penalised.choices[0].message.content != plain.choices[0].message.content


def test_a_repeated_prompt_reports_the_engines_cached_tokens(client: openai.OpenAI) -> None:
    long_question: Any = [
        {"role": "user", "content": "Describe the rivers, bridges and old silk trade of Lyon. " * 12},
    ]
    # One session: its turns go to the same engine, whose prefix cache holds the first prompt.
    extra = {"session_id": f"surface-cache-{uuid.uuid4().hex}"}
    first = client.chat.completions.create(model=MODEL, messages=long_question, max_tokens=2, extra_body=extra)
    second = client.chat.completions.create(model=MODEL, messages=long_question, max_tokens=2, extra_body=extra)

    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens
    assert 0 < second.usage.prompt_tokens_details.cached_tokens <= second.usage.prompt_tokens
