"""OpenAI's Responses API through the in-process mesh, with the official SDK: create, retrieve,
delete, input items, chaining with previous_response_id (and branching), function tools,
structured output, streaming with every event checked against the SDK's own types, erasure,
tenancy and the 400s for what is refused. The instant backend answers (`backend.script`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from services.inference.embedder import Embedder
from services.inference.tokenizer import ChatTokenizer
from tests.unit.mesh import API_KEY, MODEL, OTHER_KEY, Mesh, MeshOptions, in_process_mesh

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HERMES_CALL = 'Let me check. <tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def sdk(mesh: Mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=API_KEY, max_retries=0)


def strict(body: dict[str, Any]) -> Response:
    """The body as the SDK's type, every required field present and typed."""
    return Response.model_validate(body, strict=True)


async def test_create_retrieve_and_input_items(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "Paris is the capital of France."

    raw = await mesh.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": "What is the capital of France?",
            "instructions": "Be brief.",
            "metadata": {"k": "v"},
        },
    )

    assert raw.status_code == 200, raw.text
    body = raw.json()
    created = strict(body)
    assert created.id.startswith("resp_")
    assert created.status == "completed"
    assert created.output_text == "Paris is the capital of France."
    assert created.instructions == "Be brief."
    assert created.metadata == {"k": "v"}
    assert created.usage is not None
    assert created.usage.input_tokens > 0
    assert created.usage.total_tokens == created.usage.input_tokens + created.usage.output_tokens
    assert mesh.backend.last_prompt[0] == {"role": "system", "content": "Be brief."}

    again = await sdk.responses.retrieve(created.id)
    assert again.model_dump() == created.model_dump()
    items = await sdk.responses.input_items.list(created.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [("message", "system"), ("message", "user")]
    assert items.data[1].model_dump()["content"][0]["text"] == "What is the capital of France?"

    replay = await mesh.http.get(f"/v1/responses/{created.id}", params={"stream": "true"})
    assert replay.status_code == 400
    assert replay.json()["error"]["param"] == "stream"

    other = await mesh.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    assert other.json()["id"] != created.id


async def test_max_output_tokens_makes_it_incomplete(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "one two three four five six"
    reply = await sdk.responses.create(model=MODEL, input="count", max_output_tokens=3)
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == "one two three"


async def test_a_chain_sends_only_new_input_and_counts_the_first_turn(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "Nice to meet you, Ada."
    first = await sdk.responses.create(model=MODEL, input="My name is Ada.")
    mesh.backend.script = "Your name is Ada."

    second = await sdk.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)

    assert second.previous_response_id == first.id
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    contents = [m["content"] for m in mesh.backend.last_prompt]
    assert contents[-3:] == ["My name is Ada.", "Nice to meet you, Ada.", "What is my name?"]
    # store=false reads the chain and is not kept.
    loose = await sdk.responses.create(model=MODEL, input="Again?", previous_response_id=second.id, store=False)
    assert "My name is Ada." in [m["content"] for m in mesh.backend.last_prompt]
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(loose.id)


async def test_branching_off_an_older_response_forks_its_history(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "ok"
    first = await sdk.responses.create(model=MODEL, input="Turn one.")
    await sdk.responses.create(model=MODEL, input="Turn two.", previous_response_id=first.id)

    await sdk.responses.create(model=MODEL, input="Branch.", previous_response_id=first.id)

    contents = [m["content"] for m in mesh.backend.last_prompt]
    assert "Turn one." in contents
    assert "Turn two." not in contents
    assert contents[-1] == "Branch."


async def test_function_tools_forced_auto_and_the_output_round_trip(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = HERMES_CALL
    auto = await sdk.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    strict(auto.model_dump(mode="json", exclude_unset=True))
    calls = [o for o in auto.output if o.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert auto.output_text == "Let me check. "

    mesh.backend.script = '{"city": "Oslo"}'
    forced = await sdk.responses.create(
        model=MODEL, input="Weather?", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}
    )
    (call,) = [o for o in forced.output if o.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "Oslo"}

    mesh.backend.script = "It is 21 degrees in Paris."
    answer = await sdk.responses.create(
        model=MODEL,
        previous_response_id=auto.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"celsius": 21}'}],
    )
    assert answer.output_text == "It is 21 degrees in Paris."
    prompt = mesh.backend.last_prompt
    assert prompt[-1]["role"] == "tool"
    assert prompt[-1]["content"] == '{"celsius": 21}'
    assert any(m.get("tool_calls") for m in prompt if m["role"] == "assistant")


async def test_text_format_json_schema_reaches_the_engine(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = '{"answer": "Paris"}'
    schema: Any = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    reply = await sdk.responses.create(
        model=MODEL,
        input="Capital of France as JSON",
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}},
    )
    assert json.loads(reply.output_text) == {"answer": "Paris"}
    assert reply.text is not None
    assert reply.text.format is not None
    assert reply.text.format.type == "json_schema"
    assert mesh.backend.last_job is not None
    wanted = mesh.backend.last_job.sampling.json_schema
    assert (json.loads(wanted) if isinstance(wanted, str) else wanted) == schema

    bad = await mesh.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": 5}}},
        },
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "text.format.schema"


async def test_stream_sends_every_event_in_order(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "Streaming works fine."
    async with mesh.http.stream(
        "POST", "/v1/responses", json={"model": MODEL, "input": "stream please", "stream": True}
    ) as raw:
        assert raw.status_code == 200
        lines = [line async for line in raw.aiter_lines() if line.startswith("data: ")]
    events = [EVENTS.validate_python(json.loads(line[6:]), strict=True) for line in lines]
    types = [e.type for e in events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Streaming works fine."
    final = events[-1].response
    assert final.output_text == text
    assert (await sdk.responses.retrieve(final.id)).output_text == text

    # The SDK's stream helper agrees.
    async with sdk.responses.stream(model=MODEL, input="again") as stream:
        async for _ in stream:
            pass
        done = await stream.get_final_response()
    assert done.output_text == text


async def test_stream_of_a_function_call(mesh: Mesh) -> None:
    mesh.backend.script = HERMES_CALL
    async with mesh.http.stream(
        "POST", "/v1/responses", json={"model": MODEL, "input": "weather", "tools": [WEATHER], "stream": True}
    ) as raw:
        lines = [line async for line in raw.aiter_lines() if line.startswith("data: ")]
    events = [EVENTS.validate_python(json.loads(line[6:]), strict=True) for line in lines]
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [i.type for i in added] == ["message", "function_call"]
    (args,) = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(args) == {"city": "Paris"}
    assert events[-1].type == "response.completed"
    assert [o.type for o in events[-1].response.output] == ["message", "function_call"]


async def test_logprobs_when_included(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "yes indeed"
    reply = await sdk.responses.create(
        model=MODEL, input="ok?", include=["message.output_text.logprobs"], top_logprobs=2
    )
    part = reply.output[0].model_dump()["content"][0]
    assert part["type"] == "output_text"
    assert len(part["logprobs"]) == 2
    assert all(len(p["top_logprobs"]) == 2 for p in part["logprobs"])
    assert mesh.backend.last_job is not None
    assert mesh.backend.last_job.sampling.logprobs == 2


async def test_delete_erases_the_response_and_its_turn(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mesh.backend.script = "Noted: the vault code is marmalade-42."
    kept = await sdk.responses.create(model=MODEL, input="The vault code is marmalade-42, remember it.")
    await mesh.settle()
    found = await mesh.http.post("/v1/memories/search", json={"query": "vault code marmalade"})
    assert any("marmalade" in m["text"] for m in found.json()["data"])

    await sdk.responses.delete(kept.id)
    await mesh.settle()

    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(kept.id)
    found = await mesh.http.post("/v1/memories/search", json={"query": "vault code marmalade"})
    assert not any("marmalade" in m["text"] for m in found.json()["data"])
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model=MODEL, input="and?", previous_response_id=kept.id)


async def test_another_tenants_response_is_not_found(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mine = await sdk.responses.create(model=MODEL, input="private")
    theirs = openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.responses.create(model=MODEL, input="x", previous_response_id=mine.id)
    assert (await sdk.responses.retrieve(mine.id)).id == mine.id


async def test_input_tokens_counts_the_prompt(mesh: Mesh) -> None:
    short = await mesh.http.post("/v1/responses/input_tokens", json={"model": MODEL, "input": "hi"})
    longer = await mesh.http.post(
        "/v1/responses/input_tokens", json={"model": MODEL, "input": "hi there, how are you today?"}
    )
    assert short.status_code == 200, short.text
    assert short.json()["object"] == "response.input_tokens"
    assert longer.json()["input_tokens"] > short.json()["input_tokens"] > 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"previous_response_id": "resp_x", "conversation": "conv_x"}, "previous_response_id"),
        ({"modalities": ["text"]}, "modalities"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": ""}, "input"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format"),
    ],
)
async def test_refused_inputs_are_400_naming_the_field(mesh: Mesh, extra: dict[str, Any], param: str) -> None:
    raw = await mesh.http.post("/v1/responses", json={"model": MODEL, "input": "x", **extra})
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["param"] == param


async def test_unknown_previous_response_is_404(mesh: Mesh) -> None:
    raw = await mesh.http.post("/v1/responses", json={"model": MODEL, "input": "x", "previous_response_id": "resp_no"})
    assert raw.status_code == 404
    assert raw.json()["error"]["param"] == "previous_response_id"


async def test_truncation_disabled_refuses_a_history_that_does_not_fit(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    options = MeshOptions(context_length=1024, completion_reserve=64, indexer=False)
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as small:
        sdk = openai.AsyncOpenAI(base_url=f"{small.http.base_url}/v1", api_key=API_KEY, max_retries=0)
        small.backend.script = "ok"
        words = "river mountain copper lantern orchard violin harbor meadow " * 25
        previous, refused = None, None
        for turn in range(8):  # truncation defaults to disabled, as OpenAI's
            try:
                reply = await sdk.responses.create(
                    model=MODEL, input=f"{turn} {words}", previous_response_id=previous, max_output_tokens=4
                )
            except openai.BadRequestError as exc:
                refused = (turn, exc)
                break
            previous = reply.id
        assert refused is not None
        assert refused[0] >= 2
        assert refused[1].code == "context_length_exceeded"

        fitted = await sdk.responses.create(
            model=MODEL, input=f"9 {words}", previous_response_id=previous, truncation="auto", max_output_tokens=4
        )
        assert fitted.status == "completed"
        assert fitted.usage is not None
        assert fitted.usage.input_tokens + 4 <= 1024
