"""The Responses and Conversations APIs with the official SDK through Envoy, on the real model:
a stored response and its retrieval, a previous_response_id chain, a forced function call with
valid arguments, a stream whose every event is the SDK's type, and an answer in a conversation.
The model is tiny: the assertions hold for any output it may give, never for its wording."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)


def test_a_chain_of_two_stored_responses(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada. Say hello.", max_output_tokens=16)
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=16
    )

    Response.model_validate(client.responses.retrieve(second.id).model_dump(mode="json"), strict=True)
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.status in ("completed", "incomplete")
    items = client.responses.input_items.list(second.id)
    assert len(items.data) == 1


def test_a_forced_function_call_has_valid_arguments(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
    )
    calls = [o for o in reply.output if o.type == "function_call"]
    assert calls
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])


def test_a_stream_is_every_event_in_order(client: openai.OpenAI) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    events = list(client.responses.create(model=MODEL, input="Count to three.", max_output_tokens=16, stream=True))
    for event in events:
        adapter.validate_python(event.model_dump(mode="json"), strict=True)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")


def test_an_answer_in_a_conversation_is_among_its_items(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "I like tea."}])
    answer = client.responses.create(
        model=MODEL, input="What do I like?", conversation=conversation.id, max_output_tokens=16
    )
    items = client.conversations.items.list(conversation.id, order="asc")
    assert [i.id for i in items.data][-1] == answer.output[-1].id
    assert client.conversations.delete(conversation.id).deleted
