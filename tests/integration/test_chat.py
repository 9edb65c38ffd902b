"""The OpenAI SDK against the whole mesh, through Envoy."""

from __future__ import annotations

import uuid

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)


def test_models_lists_the_default_model(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list().data]


def test_greedy_answer_names_paris(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert reply.object == "chat.completion"
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_concatenates_to_the_non_streaming_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert chunks[-1].choices == []
    assert whole.usage is not None
    assert usage[0].completion_tokens == whole.usage.completion_tokens
    assert usage[0].prompt_tokens == whole.usage.prompt_tokens


def test_stream_without_usage_option_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=4,
            stream=True,
        )
    )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_session_keeps_the_history(client: openai.OpenAI) -> None:
    session = f"test-{uuid.uuid4().hex}"
    first = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        extra_body={"session_id": session},
    )
    assert first.headers["x-session-id"] == session
    first_reply = first.parse()
    assert first_reply.model_extra is not None
    assert first_reply.model_extra["session_id"] == session
    follow_up: list[ChatCompletionMessageParam] = [{"role": "user", "content": "And of Germany?"}]
    second = client.chat.completions.create(
        model=MODEL,
        messages=follow_up,
        temperature=0,
        extra_body={"session_id": session},
    )
    alone = client.chat.completions.create(model=MODEL, messages=follow_up, temperature=0)
    assert first_reply.usage is not None
    assert second.usage is not None
    assert alone.usage is not None
    # The second prompt carries the first question and answer: at least their tokens more than alone.
    first_turn = first_reply.usage.prompt_tokens - alone.usage.prompt_tokens + first_reply.usage.completion_tokens
    assert second.usage.prompt_tokens >= alone.usage.prompt_tokens + first_turn
    assert "Berlin" in (second.choices[0].message.content or "")


def test_session_id_in_a_header_is_echoed(client: openai.OpenAI) -> None:
    session = f"test-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=2,
        extra_headers={"X-Session-Id": session},
    )
    assert raw.headers["x-session-id"] == session
    reply = raw.parse()
    assert reply.model_extra is not None
    assert reply.model_extra["session_id"] == session


def test_no_session_means_stateless(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=2,
    )
    assert "x-session-id" not in raw.headers
    reply = raw.parse()
    assert reply.model_extra is not None
    assert "session_id" not in reply.model_extra
