"""Tool calling, logprobs and the other OpenAI parameters through the in-process mesh, with the
official SDK. The instant backend stands in for the model: `backend.script` is the text the
"model" answers, so what the mesh does with a model's output (vLLM's tool parser, the tool-call
pieces on the wire, the SSE deltas, the history) runs on a known output. What the real model does
with a forced choice is covered by tests/integration/test_openai_surface.py."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.unit.mesh import API_KEY, MODEL, Mesh

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}
HERMES_CALL = 'Let me check. <tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'


@pytest.fixture
def sdk(mesh: Mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=API_KEY, max_retries=0)


def _seen_by_model(mesh: Mesh) -> str:
    """The last prompt as the model got it: token ids, decoded with its tokenizer."""
    tokenizer = mesh.backend._tokenizer
    assert tokenizer is not None
    return str(tokenizer.hf.decode(mesh.backend.last_prompt_ids))


def _ask(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}], **extra}


async def test_auto_tool_call_is_parsed_into_tool_calls(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = HERMES_CALL

    reply = await sdk.chat.completions.create(**_ask(tools=[WEATHER], max_tokens=64))

    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check. "
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # The tools reached the model: SmolLM2's template ignores tools, so llmmesh wrote them in.
    assert '"name": "get_weather"' in _seen_by_model(mesh)


async def test_auto_tool_call_streams_as_delta_tool_calls(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = HERMES_CALL

    stream = await sdk.chat.completions.create(**_ask(tools=[WEATHER], max_tokens=64, stream=True))
    content, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or piece.id
                call["name"] += (piece.function and piece.function.name) or ""
                call["arguments"] += (piece.function and piece.function.arguments) or ""
            finish = choice.finish_reason or finish

    assert content == "Let me check. "
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


async def test_text_without_a_call_stays_content(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "It is sunny in Paris <tool"  # ends like a tag, and is none

    reply = await sdk.chat.completions.create(**_ask(tools=[WEATHER], max_tokens=64))

    assert reply.choices[0].message.content == "It is sunny in Paris <tool"
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"


async def test_tool_choice_none_renders_but_never_parses(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = HERMES_CALL

    reply = await sdk.chat.completions.create(**_ask(tools=[WEATHER], tool_choice="none", max_tokens=64))

    assert reply.choices[0].message.content == HERMES_CALL
    assert reply.choices[0].message.tool_calls is None


async def test_parallel_tool_calls_false_keeps_one_call(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    second = '<tool_call> {"name": "get_time", "arguments": {"zone": "CET"}} </tool_call>'
    mesh.backend.script = f"{HERMES_CALL} {second}"

    both = await sdk.chat.completions.create(**_ask(tools=[WEATHER, TIME], max_tokens=64))
    one = await sdk.chat.completions.create(**_ask(tools=[WEATHER, TIME], max_tokens=64, parallel_tool_calls=False))

    assert [c.function.name for c in both.choices[0].message.tool_calls or []] == ["get_weather", "get_time"]
    assert [c.function.name for c in one.choices[0].message.tool_calls or []] == ["get_weather"]


async def test_named_tool_choice_makes_the_output_the_arguments(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = '{"city": "Oslo"}'
    choice = {"type": "function", "function": {"name": "get_weather"}}

    reply = await sdk.chat.completions.create(**_ask(tools=[WEATHER, TIME], tool_choice=choice, max_tokens=64))

    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert reply.choices[0].message.content is None
    assert reply.choices[0].finish_reason == "stop"  # as OpenAI answers a named choice


async def test_required_tool_choice_parses_the_enforced_array(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = '[{"name": "get_time", "parameters": {"zone": "UTC"}}]'

    reply = await sdk.chat.completions.create(**_ask(tools=[WEATHER, TIME], tool_choice="required", max_tokens=64))

    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "UTC"}
    assert reply.choices[0].finish_reason == "tool_calls"


async def test_a_tool_round_trip_reaches_the_model_and_the_history(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = HERMES_CALL
    first = await sdk.chat.completions.create(
        **_ask(tools=[WEATHER], max_tokens=64), extra_body={"session_id": "tools-1"}
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    await mesh.stored()

    mesh.backend.script = "It is 21 degrees in Paris."
    result: Any = {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}
    second = await sdk.chat.completions.create(
        model=MODEL,
        messages=[result],
        tools=[WEATHER],
        max_tokens=64,
        extra_body={"session_id": "tools-1"},
    )
    await mesh.stored()

    assert second.choices[0].message.content == "It is 21 degrees in Paris."
    rendered = _seen_by_model(mesh)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in rendered
    assert '<tool_response>\n{"celsius": 21}\n</tool_response>' in rendered
    _, turns = await mesh.store.context("default", "tools-1")
    stored = [m for turn in turns for m in turn.messages]
    assert json.loads(stored[1].tool_calls_json)[0]["function"]["name"] == "get_weather"
    assert stored[2].role == "tool"
    assert stored[2].tool_call_id == call.id


async def test_logprobs_and_top_logprobs(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.chat.completions.create(**_ask(max_tokens=3, logprobs=True, top_logprobs=2))

    entries = reply.choices[0].logprobs.content
    assert entries is not None
    assert len(entries) == 3
    assert all(e.token == " tok" and e.bytes == list(b" tok") and len(e.top_logprobs) == 2 for e in entries)

    stream = await sdk.chat.completions.create(**_ask(max_tokens=3, logprobs=True, stream=True))
    streamed = [e async for chunk in stream for c in chunk.choices if c.logprobs for e in c.logprobs.content or []]
    assert len(streamed) == 3

    plain = await sdk.chat.completions.create(**_ask(max_tokens=3))
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
            "tools[0].function.parameters",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"42": 101}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"min_p": 2}, "min_p"),
        ({"top_k": -5}, "top_k"),
    ],
)
async def test_parameters_it_cannot_honour_are_refused_by_name(
    sdk: openai.AsyncOpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(**_ask(max_tokens=2), extra_body=extra)

    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param  # type: ignore[index]


async def test_sampling_extras_and_logit_bias_reach_the_engine(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    seen: list[Any] = []
    generate = mesh.backend.generate

    def spy(job: Any) -> Any:
        seen.append(job.sampling)
        return generate(job)

    mesh.backend.generate = spy  # type: ignore[method-assign]
    await sdk.chat.completions.create(
        **_ask(max_tokens=2, logit_bias={"42": -100}),
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "unknown_field": 1},
    )

    (sampling,) = seen
    assert (sampling.top_k, round(sampling.min_p, 3), round(sampling.repetition_penalty, 3)) == (5, 0.1, 1.2)
    assert sampling.logit_bias == {42: -100.0}


async def test_a_required_array_cut_short_keeps_its_complete_calls(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = '[{"name": "get_time", "parameters": {"zone": "UTC"}}, {"name": "get_ti'

    reply = await sdk.chat.completions.create(**_ask(tools=[WEATHER, TIME], tool_choice="required", max_tokens=64))

    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "UTC"}
