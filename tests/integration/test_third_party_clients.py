"""Third-party clients against the whole mesh, through Envoy: LangChain's ChatOpenAI (invoke,
stream, structured output both ways, bind_tools with a forced tool) and the OpenAI Agents SDK on
its chat-completions model (a forced tool run by the agent loop, and a plain answer). The model is
tiny: what is asserted is the shape (types, schemas, calls that parse and run), not the wording."""

from __future__ import annotations

from typing import Any

import jsonschema
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunContextWrapper,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

# Enough for a short answer or one tool call (the tiny model spends tokens on JSON whitespace).
MAX_TOKENS = 48
QUESTION = "What is the capital of France?"


class Capital(BaseModel):
    """A country's capital city."""

    city: str


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is sunny in {city}."


@pytest.fixture(scope="module")
def chat(stack: Stack) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=stack.base_url,
        api_key=stack.api_key,
        model=MODEL,
        max_tokens=MAX_TOKENS,
        temperature=0,
        max_retries=0,
        timeout=120,
    )


def test_langchain_invoke_answers(chat: ChatOpenAI) -> None:
    reply = chat.invoke(QUESTION)

    assert isinstance(reply, AIMessage)
    assert isinstance(reply.content, str)
    assert reply.content.strip()
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] > 0


def test_langchain_stream_joins_to_the_answer(chat: ChatOpenAI) -> None:
    chunks = list(chat.stream(QUESTION))

    assert len(chunks) > 1
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    text = "".join(c.content for c in chunks if isinstance(c.content, str))
    assert text.strip()
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.content == text


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output_is_an_instance(chat: ChatOpenAI, method: str) -> None:
    structured = chat.with_structured_output(Capital, method=method)  # type: ignore[arg-type]

    capital = structured.invoke(QUESTION)

    assert isinstance(capital, Capital)
    assert isinstance(capital.city, str)


def test_langchain_bind_tools_with_a_named_choice_calls_it(chat: ChatOpenAI) -> None:
    forced = chat.bind_tools([get_weather], tool_choice="get_weather")

    reply = forced.invoke("What is the weather in Paris?")

    assert isinstance(reply, AIMessage)
    assert not reply.invalid_tool_calls
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather"
    assert call["id"]
    jsonschema.validate(call["args"], get_weather.tool_call_schema.model_json_schema())  # type: ignore[union-attr]
    assert isinstance(get_weather.invoke(call["args"]), str)


@pytest.fixture
def agent_model(stack: Stack) -> OpenAIChatCompletionsModel:
    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)
    return OpenAIChatCompletionsModel(model=MODEL, openai_client=client)


def _weather_agent(
    model: OpenAIChatCompletionsModel, cities: list[str], settings: ModelSettings, **extra: Any
) -> Agent[None]:
    @function_tool
    def get_weather(ctx: RunContextWrapper[None], city: str) -> str:
        """The current weather in a city.

        Args:
            city: The city's name.
        """
        cities.append(city)
        return f"It is sunny and 21 degrees in {city}."

    return Agent(
        name="weather",
        instructions="You answer questions about the weather, using the get_weather tool.",
        model=model,
        tools=[get_weather],
        model_settings=ModelSettings(max_tokens=MAX_TOKENS, temperature=0).resolve(settings),
        **extra,
    )


@pytest.mark.parametrize("tool_choice", ["get_weather", "required"])
async def test_agent_runs_the_forced_tool_then_answers(
    agent_model: OpenAIChatCompletionsModel, tool_choice: str
) -> None:
    cities: list[str] = []
    # `required` allows an array of calls: one at most, or the tiny model repeats the call
    # until max_tokens cuts the array short (and a cut array is no call).
    settings = ModelSettings(tool_choice=tool_choice, parallel_tool_calls=False if tool_choice == "required" else None)
    agent = _weather_agent(agent_model, cities, settings)

    result = await Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    assert len(cities) >= 1
    assert all(isinstance(city, str) for city in cities)
    assert isinstance(result.final_output, str)
    # The tool ran, its output went back, and the last turn (tool choice reset) was text.
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds
    assert "tool_call_output_item" in kinds
    assert kinds[-1] == "message_output_item"


async def test_agent_stops_on_the_first_tool_with_its_output(agent_model: OpenAIChatCompletionsModel) -> None:
    cities: list[str] = []
    settings = ModelSettings(tool_choice="get_weather")
    agent = _weather_agent(agent_model, cities, settings, tool_use_behavior="stop_on_first_tool")

    result = await Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    (city,) = cities
    assert isinstance(city, str)
    assert result.final_output == f"It is sunny and 21 degrees in {city}."


async def test_agent_without_tools_answers(agent_model: OpenAIChatCompletionsModel) -> None:
    agent: Agent[None] = Agent(
        name="plain",
        instructions="You are a helpful assistant.",
        model=agent_model,
        model_settings=ModelSettings(max_tokens=MAX_TOKENS, temperature=0),
    )

    result = await Runner.run(agent, QUESTION, max_turns=1)

    assert isinstance(result.final_output, str)
    assert result.final_output.strip()
