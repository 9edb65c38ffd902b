"""Anthropic's Messages API through the in-process mesh, with the official `anthropic` SDK as the
client. Every body and stream event is also validated strictly against the SDK's own types (no
field it does not know, none missing, right types): the SDK alone would parse leniently. The
instant backend stands in for the model (`backend.script` is what it answers)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import grpc
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import BaseModel, TypeAdapter

from services.common.errors import MeshError
from services.gateway.anthropic_protocol import mesh_tool_id, wire_tool_id
from services.gateway.messages import _Reply
from services.gateway.pipeline import Accepted, ChoiceDone, Delta, Done
from tests.unit.mesh import API_KEY, MODEL, Mesh

WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HERMES_CALL = 'Let me check. <tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=str(mesh.http.base_url), api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


def _no_extra(value: Any, where: str = "") -> None:
    """No field the SDK's types do not declare, at any depth (they allow extras silently)."""
    if isinstance(value, BaseModel):
        assert not value.model_extra, f"undeclared fields at {where or 'top'}: {value.model_extra}"
        for name in type(value).model_fields:
            _no_extra(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_extra(item, f"{where}[{i}]")


def strict(type_: Any, data: Any) -> Any:
    value = TypeAdapter(type_).validate_python(data, strict=True)
    _no_extra(value)
    return value


def _seen_by_model(mesh: Mesh) -> str:
    tokenizer = mesh.backend._tokenizer
    assert tokenizer is not None
    return str(tokenizer.hf.decode(mesh.backend.last_prompt_ids))


async def _raw_events(mesh: Mesh, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE stream as (event line, data) pairs, each event's two names checked to agree."""
    async with mesh.http.stream("POST", "/v1/messages", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = (await response.aread()).decode()
    events = []
    for frame in text.strip().split("\n\n"):
        event_line, data_line = frame.split("\n")
        kind, data = event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert event_line.startswith("event: ")
        assert data["type"] == kind
        events.append((kind, data))
    return events


def _validate_stream(events: list[tuple[str, dict[str, Any]]]) -> None:
    for kind, data in events:
        if kind != "ping":  # not among the SDK's stream event types
            strict(RawMessageStreamEvent, data)


async def test_create_answers_a_message_object(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    mesh.backend.script = "Paris is sunny."
    raw = await mesh.http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 32, "system": "Be terse.", "messages": ASK},
        headers={"x-request-id": "client-chosen-id"},
    )
    assert raw.status_code == 200
    message = strict(Message, raw.json())

    assert message.id.startswith("msg_")
    assert "client-chosen-id" not in message.id
    assert [(b.type, b.text) for b in message.content if b.type == "text"] == [("text", "Paris is sunny.")]
    assert (message.role, message.model, message.stop_reason, message.stop_sequence) == (
        "assistant",
        MODEL,
        "end_turn",
        None,
    )
    assert message.usage.output_tokens == 3
    assert message.usage.input_tokens == len(mesh.backend.last_prompt_ids)
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (0, 0)
    assert mesh.backend.last_prompt[0] == {"role": "system", "content": "Be terse."}
    # Two calls, two ids.
    again = await client.messages.create(model=MODEL, max_tokens=32, messages=ASK)
    assert again.id != message.id


async def test_the_sdk_reads_the_answer_and_max_tokens_stops_it(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(model=MODEL, max_tokens=3, messages=ASK)

    assert message.content[0].type == "text"
    assert message.content[0].text == " tok tok tok"
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


async def test_sampling_parameters_reach_the_engine(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    await client.messages.create(
        model=MODEL,
        max_tokens=2,
        messages=ASK,
        stop_sequences=["END", "\n\n"],
        extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 7},  # this SDK no longer sends them itself
    )

    job = mesh.backend.last_job
    assert job is not None
    sampling = job.sampling
    assert sampling.temperature == pytest.approx(0.3)
    assert sampling.top_p == pytest.approx(0.9)
    assert sampling.top_k == 7
    assert (sampling.max_tokens, list(sampling.stop)) == (2, ["END", "\n\n"])


async def test_the_stream_follows_anthropics_event_sequence(mesh: Mesh) -> None:
    mesh.backend.script = "Paris is sunny today."
    events = await _raw_events(mesh, {"model": MODEL, "max_tokens": 32, "messages": ASK})

    _validate_stream(events)
    kinds = [kind for kind, _ in events]
    deltas = kinds.count("content_block_delta")  # how the relay groups tokens: one piece or more
    assert deltas >= 1
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    text = "".join(data["delta"]["text"] for kind, data in events if kind == "content_block_delta")
    assert text == "Paris is sunny today."
    assert all(data["index"] == 0 for kind, data in events if kind.startswith("content_block"))
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4


async def test_the_sdk_stream_helper_builds_the_message(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    mesh.backend.script = "Paris is sunny today."
    async with client.messages.stream(model=MODEL, max_tokens=32, messages=ASK) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert "".join(texts) == "Paris is sunny today."
    assert final.content[0].type == "text"
    assert final.content[0].text == "Paris is sunny today."
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens == 4


async def test_a_tool_call_comes_back_as_a_tool_use_block(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    mesh.backend.script = HERMES_CALL
    raw = await mesh.http.post(
        "/v1/messages", json={"model": MODEL, "max_tokens": 64, "messages": ASK, "tools": [WEATHER]}
    )
    message = strict(Message, raw.json())

    text, call = message.content
    assert (text.type, text.text) == ("text", "Let me check. ")
    assert call.type == "tool_use"
    assert call.id.startswith("toolu_")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert '"name": "get_weather"' in _seen_by_model(mesh)  # the tool reached the model


async def test_a_tool_use_streams_as_input_json_deltas(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    mesh.backend.script = HERMES_CALL
    body = {"model": MODEL, "max_tokens": 64, "messages": ASK, "tools": [WEATHER]}
    events = await _raw_events(mesh, body)

    _validate_stream(events)
    starts = [data for kind, data in events if kind == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    assert starts[1]["index"] == 1
    assert starts[1]["content_block"]["name"] == "get_weather"
    assert starts[1]["content_block"]["id"].startswith("toolu_")
    pieces = [d["delta"]["partial_json"] for k, d in events if k == "content_block_delta" and d["index"] == 1]
    assert pieces
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert [d["index"] for k, d in events if k == "content_block_stop"] == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    # The SDK's accumulator agrees.
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=ASK, tools=[WEATHER]) as stream:
        final = await stream.get_final_message()
    assert final.content[1].type == "tool_use"
    assert final.content[1].input == {"city": "Paris"}


async def test_tool_choice_forces_the_named_tool(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    mesh.backend.script = '{"city": "Oslo"}'  # a forced call: the output is the arguments

    message = await client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )

    (call,) = message.content
    assert call.type == "tool_use"
    assert (call.name, call.input) == ("get_weather", {"city": "Oslo"})
    assert message.stop_reason == "tool_use"
    job = mesh.backend.last_job
    assert job is not None
    assert (job.tool_choice, job.tool_name, job.single_tool_call) == (
        "function",
        "get_weather",
        True,
    )


async def test_tool_choice_any_and_none(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    mesh.backend.script = '[{"name": "get_weather", "parameters": {"city": "Rome"}}]'
    forced = await client.messages.create(
        model=MODEL, max_tokens=64, messages=ASK, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert [(b.type, getattr(b, "input", None)) for b in forced.content] == [("tool_use", {"city": "Rome"})]

    mesh.backend.script = HERMES_CALL
    plain = await client.messages.create(
        model=MODEL, max_tokens=64, messages=ASK, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert [b.type for b in plain.content] == ["text"]
    assert plain.stop_reason == "end_turn"


async def test_a_tool_result_round_trip_reaches_the_model(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    mesh.backend.script = HERMES_CALL
    first = await client.messages.create(model=MODEL, max_tokens=64, messages=ASK, tools=[WEATHER])
    call = next(b for b in first.content if b.type == "tool_use")

    mesh.backend.script = "It is 21 degrees in Paris."
    second = await client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            *ASK,
            first.to_param(),
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": '{"c": 21}'}]},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    )

    assert second.content[0].type == "text"
    assert second.content[0].text == "It is 21 degrees in Paris."
    rendered = _seen_by_model(mesh)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in rendered
    assert '<tool_response>\n{"c": 21}\n</tool_response>' in rendered
    assert rendered.index("</tool_response>") < rendered.index("And tomorrow?")
    # The call id the client saw is the mesh's own again on the way in.
    assert mesh.backend.last_prompt[2]["tool_calls"][0]["id"] == mesh_tool_id(call.id)
    assert mesh.backend.last_prompt[3]["tool_call_id"] == mesh_tool_id(call.id)


async def test_in_a_session_the_stored_call_and_the_clients_result_share_an_id(
    mesh: Mesh, client: anthropic.AsyncAnthropic
) -> None:
    sid = f"anthropic-tools-{uuid.uuid4().hex[:8]}"
    session = {"X-Session-Id": sid}
    mesh.backend.script = HERMES_CALL
    first = await client.messages.create(
        model=MODEL, max_tokens=64, messages=ASK, tools=[WEATHER], extra_headers=session
    )
    call = next(b for b in first.content if b.type == "tool_use")
    await mesh.stored()

    mesh.backend.script = "It is 21 degrees."
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": '{"c": 21}'}
    await client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": [result]}],
        tools=[WEATHER],
        extra_headers=session,
    )
    await mesh.stored()

    _, turns = await mesh.store.context("default", sid)
    stored = [m for turn in turns for m in turn.messages]
    stored_call_id = json.loads(stored[1].tool_calls_json)[0]["id"]
    assert stored_call_id.startswith("chatcmpl-tool-")  # the mesh's own id, as the engine made it
    assert (stored[2].role, stored[2].tool_call_id) == ("tool", stored_call_id)


async def test_an_error_tool_result_says_so_to_the_model(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    await client.messages.create(
        model=MODEL,
        max_tokens=2,
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_x", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "is_error": True, "content": "timeout"}],
            },
        ],
        tools=[WEATHER],
    )

    assert mesh.backend.last_prompt[-1] == {"role": "tool", "content": "Error: timeout", "tool_call_id": "toolu_x"}


def test_mesh_tool_ids_round_trip_and_others_pass_unchanged() -> None:
    assert wire_tool_id("chatcmpl-tool-ab12") == "toolu_llmmesh_ab12"
    assert mesh_tool_id("toolu_llmmesh_ab12") == "chatcmpl-tool-ab12"
    assert wire_tool_id("call_9") == mesh_tool_id("call_9") == "call_9"
    assert mesh_tool_id("toolu_01A") == "toolu_01A"


async def test_count_tokens_counts_with_the_models_template(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
    raw = await mesh.http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": messages, "system": "S"})
    counted = strict(MessageTokensCount, raw.json())

    tokenizer = mesh.backend._tokenizer
    assert tokenizer is not None
    expected = tokenizer.encode_chat([{"role": "system", "content": "S"}, *messages])
    assert counted.input_tokens == len(expected)
    longer = await client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "How many tokens is this, now that it is longer?"}]
    )
    assert longer.input_tokens > len(tokenizer.encode_chat(messages))
    # What the model is given for the same request (no session: nothing but the request).
    answered = await client.messages.create(model=MODEL, max_tokens=1, system="S", messages=messages)
    assert answered.usage.input_tokens == counted.input_tokens


async def test_x_api_key_is_accepted_and_a_wrong_one_is_401(mesh: Mesh) -> None:
    body = {"model": MODEL, "max_tokens": 2, "messages": ASK}
    headers = {"Authorization": "", "x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    assert (await mesh.http.post("/v1/messages", json=body, headers=headers)).status_code == 200

    async with anthropic.AsyncAnthropic(base_url=str(mesh.http.base_url), api_key="llm-x", max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await wrong.messages.create(**body)
    assert refused.value.status_code == 401
    error = strict(ErrorResponse, refused.value.response.json())
    assert error.error.type == "authentication_error"

    missing = await mesh.http.post("/v1/messages/count_tokens", json=body, headers={"Authorization": ""})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    # Other routes keep OpenAI's shape.
    chat = await mesh.http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert chat.status_code == 401
    assert set(chat.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}, "mcp_servers"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"temperature": 1.5}, "temperature"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}
                ]
            },
            "'image'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "'document'",
        ),
        ({"messages": [*ASK, {"role": "assistant", "content": "The weather is"}]}, "prefill"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"metadata": {"user_id": "u", "session": "s"}}, "session"),
        ({"tools": [{**WEATHER, "strict": True}]}, "strict"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": [{"x": 1}]}]}]},
            "citations",
        ),
    ],
)
async def test_what_cannot_be_honoured_is_a_400_naming_it(mesh: Mesh, change: dict[str, Any], named: str) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": ASK, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = await mesh.http.post("/v1/messages", json=body)

    assert response.status_code == 400
    error = strict(ErrorResponse, response.json())
    assert error.error.type == "invalid_request_error"
    assert named in error.error.message


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "\ud800 lone surrogate"}]},
        {"system": "nul \u0000 char"},
        {"metadata": {"user_id": "\ud800"}},
        {"stop_sequences": ["\ud800"]},
        {"tools": [{"name": "f", "input_schema": {"type": 5}}]},
        {"tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool"}},
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": [{}]}]}]},
        {"messages": [{"role": "user", "content": [{"no": "type"}]}]},
        {"messages": [{"role": "user", "content": [5]}]},
        {"messages": []},
        {"max_tokens": 2**40},
        {"max_tokens": 2**70, "temperature": 1e308},
    ],
)
async def test_odd_input_is_never_a_5xx(mesh: Mesh, change: dict[str, Any]) -> None:
    body = json.dumps({"model": MODEL, "max_tokens": 4, "messages": ASK, **change})
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = await mesh.http.post(path, content=body, headers={"Content-Type": "application/json"})

        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:
            strict(ErrorResponse, response.json())


async def test_parameters_at_their_no_op_values_are_accepted(mesh: Mesh) -> None:
    cache: Any = {"type": "ephemeral"}
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "system": [{"type": "text", "text": "Be terse.", "cache_control": cache}, {"type": "text", "text": "Be kind."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "citations": None}]}],
        "tools": [{**WEATHER, "strict": False, "cache_control": cache}],
        "thinking": {"type": "disabled"},
        "service_tier": "auto",
        "cache_control": cache,
        "metadata": {"user_id": None},
    }
    response = await mesh.http.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})

    assert response.status_code == 200, response.text
    assert mesh.backend.last_prompt[0]["content"].startswith("Be terse.\n\nBe kind.")


async def test_a_bad_request_through_the_sdk_is_bad_request_error(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model=MODEL,
            max_tokens=4,
            messages=[
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}]}
            ],
        )
    assert "'image'" in refused.value.message


async def test_an_unknown_model_is_404_not_found_error(mesh: Mesh) -> None:
    response = await mesh.http.post("/v1/messages", json={"model": "no-such-model", "max_tokens": 4, "messages": ASK})

    assert response.status_code == 404
    assert strict(ErrorResponse, response.json()).error.type == "not_found_error"


async def test_a_session_keeps_the_history_across_turns(mesh: Mesh, client: anthropic.AsyncAnthropic) -> None:
    sid = f"anthropic-{uuid.uuid4().hex[:8]}"
    first = await client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=4,
        messages=[{"role": "user", "content": "My cat is called Miso."}],
        metadata={"user_id": "user-42"},
        extra_headers={"X-Session-Id": sid},
    )
    assert first.headers["x-session-id"] == sid
    await mesh.stored()

    await client.messages.create(
        model=MODEL,
        max_tokens=4,
        messages=[{"role": "user", "content": "What is my cat called?"}],
        extra_headers={"X-Session-Id": sid},
    )

    contents = [m["content"] for m in mesh.backend.last_prompt]
    assert "My cat is called Miso." in contents
    assert contents[-1] == "What is my cat called?"
    session = (await mesh.http.get(f"/v1/sessions/{sid}")).json()
    assert session["user"] == "user-42"  # metadata.user_id is the turn's user


async def _events(*items: Any, fail: MeshError | None = None) -> AsyncIterator[Any]:
    for item in items:
        yield item
    if fail is not None:
        raise fail


async def test_an_error_after_the_first_byte_is_an_error_event() -> None:
    reply = _Reply(MODEL)
    accepted = Accepted("general", MODEL, 5)
    limit = MeshError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limit reached for tokens per minute.")
    frames = [f async for f in reply.sse(accepted, _events(Delta(0, "Hi"), fail=limit))]

    kinds = [f.split(b"\n")[0].decode() for f in frames]
    assert kinds == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        "event: content_block_delta",
        "event: error",
    ]
    error = json.loads(frames[-1].split(b"\n")[1].removeprefix(b"data: "))
    assert strict(ErrorResponse, error).error.type == "rate_limit_error"
    assert error["error"]["message"] == "Rate limit reached for tokens per minute."


async def test_an_empty_answer_has_no_blocks_and_still_ends() -> None:
    reply = _Reply(MODEL)
    frames = [f async for f in reply.sse(Accepted("", MODEL, 5), _events(ChoiceDone(0, "stop"), Done(5, 0)))]

    assert [f.split(b"\n")[0] for f in frames] == [
        b"event: message_start",
        b"event: message_delta",
        b"event: message_stop",
    ]


async def test_the_openapi_document_declares_anthropics_errors_and_key(mesh: Mesh) -> None:
    doc = (await mesh.http.get("/openapi.json")).json()

    create = doc["paths"]["/v1/messages"]["post"]
    assert {"400", "401", "403", "404", "429", "500", "503"} <= set(create["responses"])
    error = create["responses"]["401"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/AnthropicErrorResponse"}
    assert set(doc["components"]["schemas"]["AnthropicErrorResponse"]["properties"]) == {"type", "error"}
    assert {"x-api-key": []} in create["security"]
    assert doc["components"]["securitySchemes"]["x-api-key"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert "text/event-stream" in create["responses"]["200"]["content"]
