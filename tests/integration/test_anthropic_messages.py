"""Anthropic's Messages API with the official `anthropic` SDK through Envoy, on the real model: a
message, a stream (every event validated strictly against the SDK's types), a forced tool call
whose input follows the schema, and count_tokens agreeing with the usage of the same prompt. The
model is tiny: what is asserted is the shape, never the wording."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import BaseModel, TypeAdapter

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

WEATHER: Any = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=stack.settings.public_url, api_key=stack.api_key, max_retries=0, timeout=120
    ) as sdk:
        yield sdk


def _strict(type_: Any, value: Any) -> None:
    """Validated against the SDK's type with no field it does not declare."""
    parsed = TypeAdapter(type_).validate_python(value.model_dump(mode="json", exclude_unset=True), strict=True)

    def walk(item: Any) -> None:
        if isinstance(item, BaseModel):
            assert not item.model_extra, item.model_extra
            for name in type(item).model_fields:
                walk(getattr(item, name))
        elif isinstance(item, list):
            for element in item:
                walk(element)

    walk(parsed)


def test_a_message_and_its_usage(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=24, system=SYSTEM, messages=QUESTION)

    _strict(Message, message)
    assert message.id.startswith("msg_")
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.content[0].type == "text"
    assert message.usage.output_tokens > 0
    counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=QUESTION)
    assert counted.input_tokens == message.usage.input_tokens  # no session: the prompt is the request


def test_a_stream_in_anthropics_order(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=24, messages=QUESTION) as stream:
        events = list(stream)
        final = stream.get_final_message()

    raw = [e for e in events if e.type in ("message_start", "content_block_start", "content_block_delta")]
    kinds = [e.type for e in raw]
    assert kinds[:2] == ["message_start", "content_block_start"]
    for event in raw:
        _strict(RawMessageStreamEvent, event)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.content[0].type == "text"
    assert final.content[0].text


def test_a_forced_tool_call_follows_its_schema(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )

    _strict(Message, message)
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    jsonschema.validate(calls[0].input, WEATHER["input_schema"])
    assert message.stop_reason == "tool_use"
