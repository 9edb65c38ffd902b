"""The OpenAI request model and its conversion to mesh protos."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from llmmesh.common.v1 import chat_pb2
from services.gateway.errors import APIError
from services.gateway.protocol import ChatCompletionRequest, ChatMessageIn

USER = {"role": "user", "content": "hi"}


def request(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


# ---------------------------------------------------------------- to_sampling


def test_to_sampling_leaves_unset_optionals_unset() -> None:
    sampling = request().to_sampling()

    assert sampling == chat_pb2.SamplingParams(n=1)
    for name in ("temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty"):
        assert not sampling.HasField(name), name


def test_to_sampling_copies_every_value() -> None:
    sampling = request(
        temperature=0.5,
        top_p=0.25,
        max_tokens=64,
        seed=1234,
        n=3,
        presence_penalty=-1.5,
        frequency_penalty=0.75,
    ).to_sampling()

    assert sampling == chat_pb2.SamplingParams(
        temperature=0.5,
        top_p=0.25,
        max_tokens=64,
        seed=1234,
        n=3,
        presence_penalty=-1.5,
        frequency_penalty=0.75,
    )


def test_to_sampling_keeps_explicit_zero_temperature() -> None:
    sampling = request(temperature=0).to_sampling()

    assert sampling.HasField("temperature")
    assert sampling.temperature == 0.0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 20}, 20),
        ({"max_tokens": 10, "max_completion_tokens": 20}, 20),
    ],
)
def test_max_completion_tokens_is_preferred_over_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert request(**fields).to_sampling().max_tokens == expected


def test_stop_as_a_string_becomes_one_stop() -> None:
    assert list(request(stop="END").to_sampling().stop) == ["END"]


def test_stop_as_a_list_is_kept_in_order() -> None:
    assert list(request(stop=["a", "b", "c", "d"]).to_sampling().stop) == ["a", "b", "c", "d"]


def test_more_than_four_stops_is_a_400_on_stop() -> None:
    with pytest.raises(APIError) as caught:
        request(stop=["a", "b", "c", "d", "e"]).to_sampling()

    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "stop"
    assert "at most 4 stop sequences" in caught.value.message


def test_response_format_json_schema_becomes_schema_json_text() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

    sampling = request(
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    ).to_sampling()

    assert json.loads(sampling.json_schema) == schema
    assert sampling.json_object is False


def test_response_format_json_schema_without_schema_is_a_400() -> None:
    with pytest.raises(APIError) as caught:
        request(response_format={"type": "json_schema"}).to_sampling()

    assert (caught.value.status, caught.value.param) == (400, "response_format")


@pytest.mark.parametrize(
    "schema",
    [{"type": "objekt"}, {"type": "object", "properties": {"a": {"type": 12}}}, {"required": "a"}],
)
def test_an_invalid_json_schema_is_a_400_naming_the_schema(schema: dict[str, object]) -> None:
    body = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

    with pytest.raises(APIError) as caught:
        request(response_format=body).to_sampling()

    assert (caught.value.status, caught.value.param) == (400, "response_format.json_schema.schema")
    assert caught.value.message.startswith("Invalid JSON schema")


def test_response_format_json_object_sets_the_flag() -> None:
    sampling = request(response_format={"type": "json_object"}).to_sampling()

    assert sampling.json_object is True
    assert sampling.json_schema == ""


def test_response_format_text_sets_nothing() -> None:
    sampling = request(response_format={"type": "text"}).to_sampling()

    assert (sampling.json_object, sampling.json_schema) == (False, "")


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"temperature": 2.5},
        {"top_p": 0},
        {"n": 0},
        {"n": 17},
        {"max_tokens": 0},
        # Beyond what the proto fields carry (int64 seed, int32 max_tokens).
        {"seed": 2**63},
        {"max_tokens": 2**31},
        {"max_completion_tokens": 2**31},
    ],
)
def test_out_of_range_fields_fail_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(**fields)


# ---------------------------------------------------------------- to_messages


def test_to_messages_maps_every_field() -> None:
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]

    messages = request(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "alice"},
            {"role": "assistant", "content": None, "tool_calls": tool_calls},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        ]
    ).to_messages()

    assert messages == [
        chat_pb2.ChatMessage(role="system", content="be brief"),
        chat_pb2.ChatMessage(role="user", content="hi", name="alice"),
        chat_pb2.ChatMessage(role="assistant", content="", tool_calls_json=json.dumps(tool_calls)),
        chat_pb2.ChatMessage(role="tool", content="42", tool_call_id="call_1"),
    ]
    assert json.loads(messages[2].tool_calls_json) == tool_calls


def test_text_content_parts_are_flattened_in_order() -> None:
    message = ChatMessageIn.model_validate(
        {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]}
    )

    assert message.text() == "Hello, world"
    assert message.to_proto().content == "Hello, world"


def test_empty_content_parts_flatten_to_empty_text() -> None:
    assert ChatMessageIn.model_validate({"role": "user", "content": []}).text() == ""


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
        {"type": "image_url", "text": "a caption", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text"},  # text part without text
    ],
)
def test_non_text_content_part_is_rejected_on_messages(part: dict[str, Any]) -> None:
    body = request(messages=[{"role": "user", "content": [{"type": "text", "text": "look"}, part]}])

    with pytest.raises(APIError) as caught:
        body.to_messages()

    assert caught.value.status == 400
    assert caught.value.param == "messages"
    assert repr(part["type"]) in caught.value.message


def test_unknown_role_fails_validation() -> None:
    with pytest.raises(ValidationError):
        request(messages=[{"role": "robot", "content": "beep"}])
