"""OpenAI's Conversations API through the in-process mesh, with the official SDK: a conversation
is a session (one id space), its items are the session's stored messages, responses answer in
it, and deleting it (or one item) erases the text everywhere. Tenancy and bad inputs too."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.conversations import Conversation, ConversationItem
from openai.types.responses import Response
from pydantic import TypeAdapter

from tests.unit.mesh import API_KEY, MODEL, OTHER_KEY, Mesh

ITEMS: TypeAdapter[Any] = TypeAdapter(ConversationItem)


@pytest.fixture
def sdk(mesh: Mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=API_KEY, max_retries=0)


async def test_create_add_answer_list_and_delete(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(
        items=[{"type": "message", "role": "user", "content": "My cat is called Pixel."}], metadata={"topic": "pets"}
    )
    assert conversation.id.startswith("conv_")
    assert conversation.metadata == {"topic": "pets"}
    added = await sdk.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": "She is three years old."}]
    )
    assert len(added.data) == 1

    mesh.backend.script = "Pixel is three."
    answer = await sdk.responses.create(model=MODEL, input="How old is Pixel?", conversation=conversation.id)
    assert answer.conversation is not None
    assert answer.conversation.id == conversation.id
    contents = [m["content"] for m in mesh.backend.last_prompt]
    assert contents[-3:] == ["My cat is called Pixel.", "She is three years old.", "How old is Pixel?"]

    raw = await mesh.http.get(f"/v1/conversations/{conversation.id}/items", params={"order": "asc"})
    assert raw.status_code == 200
    data = raw.json()["data"]
    for item in data:
        ITEMS.validate_python(item, strict=True)
    texts = [item["content"][0]["text"] for item in data]
    assert texts == ["My cat is called Pixel.", "She is three years old.", "How old is Pixel?", "Pixel is three."]
    # The answer's output item is the conversation's item, by id.
    assert data[-1]["id"] == answer.output[0].id
    newest = await sdk.conversations.items.list(conversation.id, limit=1)
    assert [i.id for i in newest.data] == [answer.output[0].id]
    assert newest.has_more
    one = await sdk.conversations.items.retrieve(data[0]["id"], conversation_id=conversation.id)
    assert one.id == data[0]["id"]

    updated = await sdk.conversations.update(conversation.id, metadata={"topic": "cats"})
    assert updated.metadata == {"topic": "cats"}
    Conversation.model_validate((await mesh.http.get(f"/v1/conversations/{conversation.id}")).json(), strict=True)

    deleted = await sdk.conversations.delete(conversation.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(answer.id)


async def test_a_session_is_a_conversation_and_back(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    created = await mesh.http.post("/v1/sessions", json={})
    session_id = created.json()["id"]
    mesh.backend.script = "Hello there."
    await mesh.chat("Hi, I am Grace.", session_id=session_id)
    await mesh.stored()

    items = await sdk.conversations.items.list(session_id, order="asc")
    assert [i.model_dump()["content"][0]["text"] for i in items.data] == ["Hi, I am Grace.", "Hello there."]

    conversation = await sdk.conversations.create()
    await sdk.responses.create(model=MODEL, input="Remember: blue.", conversation=conversation.id)
    await mesh.chat("What colour?", session_id=conversation.id)
    assert "Remember: blue." in [m["content"] for m in mesh.backend.last_prompt]


async def test_deleting_a_conversation_erases_its_text(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create()
    mesh.backend.script = "Understood, the password is tangerine-77."
    answer = await sdk.responses.create(
        model=MODEL, input="The password is tangerine-77.", conversation=conversation.id
    )
    await mesh.settle()
    found = await mesh.http.post("/v1/memories/search", json={"query": "password tangerine"})
    assert any("tangerine" in m["text"] for m in found.json()["data"])

    await sdk.conversations.delete(conversation.id)
    await mesh.settle()

    found = await mesh.http.post("/v1/memories/search", json={"query": "password tangerine"})
    assert not any("tangerine" in m["text"] for m in found.json()["data"])
    listed = await mesh.http.get("/v1/memories", params={"session_id": conversation.id})
    assert listed.json()["data"] == []
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(answer.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.list(conversation.id)


async def test_deleting_an_item_erases_it_and_keeps_the_other_ids(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(
        items=[
            {"type": "message", "role": "user", "content": "My locker number is 4417."},
            {"type": "message", "role": "user", "content": "I like green tea."},
        ]
    )
    await mesh.settle()
    before = (await sdk.conversations.items.list(conversation.id, order="asc")).data
    found = await mesh.http.post("/v1/memories/search", json={"query": "locker number 4417"})
    assert any("4417" in m["text"] for m in found.json()["data"])

    await sdk.conversations.items.delete(str(before[0].id), conversation_id=conversation.id)

    after = (await sdk.conversations.items.list(conversation.id, order="asc")).data
    assert [i.id for i in after] == [before[1].id]
    found = await mesh.http.post("/v1/memories/search", json={"query": "locker number 4417"})
    assert not any("4417" in m["text"] for m in found.json()["data"])
    mesh.backend.script = "ok"
    await sdk.responses.create(model=MODEL, input="What do I like?", conversation=conversation.id)
    contents = [m["content"] for m in mesh.backend.last_prompt]
    assert "My locker number is 4417." not in contents
    assert "I like green tea." in contents
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.retrieve(str(before[0].id), conversation_id=conversation.id)
    with pytest.raises(openai.BadRequestError):
        await sdk.conversations.items.list(conversation.id, include=["message.output_text.logprobs"])


async def test_another_tenants_conversation_is_not_found(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    mine = await sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "secret"}])
    theirs = openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await theirs.conversations.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.conversations.items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.conversations.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.responses.create(model=MODEL, input="x", conversation=mine.id)
    assert (await sdk.conversations.retrieve(mine.id)).id == mine.id


async def test_answering_in_an_unknown_conversation_is_404(mesh: Mesh) -> None:
    raw = await mesh.http.post("/v1/responses", json={"model": MODEL, "input": "x", "conversation": {"id": "conv_no"}})
    assert raw.status_code == 404
    assert raw.json()["error"]["param"] == "conversation"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"items": [{"type": "message", "role": "user", "content": "x"}] * 21}, "items"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        (
            {"items": [{"type": "message", "role": "user", "content": [{"type": "input_image"}]}]},
            "items[0].content[0].type",
        ),
        ({"items": [{"type": "web_search_call"}]}, "items[0].type"),
        ({"items": [{"type": "message", "role": "critic", "content": "x"}]}, "items[0].role"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ],
)
async def test_bad_conversations_are_400_naming_the_field(mesh: Mesh, body: dict[str, Any], param: str) -> None:
    raw = await mesh.http.post("/v1/conversations", json=body)
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["param"] == param


async def test_response_object_in_a_conversation_is_strict(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create()
    raw = await mesh.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conversation.id})
    Response.model_validate(raw.json(), strict=True)


async def test_one_item_of_a_message_with_several_is_not_deleted_alone(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create()
    mesh.backend.script = 'Checking. <tool_call> {"name": "get_weather", "arguments": {"city": "Rome"}} </tool_call>'
    tool: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    answer = await sdk.responses.create(model=MODEL, input="Rome?", tools=[tool], conversation=conversation.id)
    assert [o.type for o in answer.output] == ["message", "function_call"]

    with pytest.raises(openai.BadRequestError):
        await sdk.conversations.items.delete(str(answer.output[1].id), conversation_id=conversation.id)

    items = (await sdk.conversations.items.list(conversation.id, order="asc")).data
    assert [i.id for i in items][-2:] == [answer.output[0].id, answer.output[1].id]
