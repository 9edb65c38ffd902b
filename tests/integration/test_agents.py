"""Agents and public models through Envoy with the official OpenAI SDK, on the real model:
`/v1/models` lists exactly the public names, `llmmesh` and `llmmesh-<agent>` answer, and the
agent and backend come back in headers."""

from __future__ import annotations

import openai
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)


def test_models_lists_exactly_the_public_names(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [
        "llmmesh",
        "llmmesh-general",
        "llmmesh-code-reviewer",
        "llmmesh-sports-coach",
        MODEL,
        "all-minilm-l6-v2",
    ]


def test_llmmesh_chooses_the_agent_from_the_content(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="llmmesh",
        messages=[{"role": "user", "content": "How should I train for my first half marathon?"}],
        max_tokens=16,
        temperature=0,
    )
    reply = raw.parse()

    assert (raw.headers["x-llmmesh-agent"], raw.headers["x-llmmesh-backend"]) == ("sports-coach", MODEL)
    assert reply.model == "llmmesh"
    assert reply.choices[0].message.content


def test_a_pinned_agent_answers_and_streams(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="llmmesh-code-reviewer",
        messages=[{"role": "user", "content": "def add(a, b): return a - b"}],
        max_tokens=16,
        temperature=0,
    )
    with client.chat.completions.with_streaming_response.create(
        model="llmmesh-code-reviewer",
        messages=[{"role": "user", "content": "def add(a, b): return a - b"}],
        max_tokens=16,
        temperature=0,
        stream=True,
    ) as streamed:
        headers = (streamed.headers["x-llmmesh-agent"], streamed.headers["x-llmmesh-backend"])
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices)

    assert (raw.headers["x-llmmesh-agent"], raw.headers["x-llmmesh-backend"]) == ("code-reviewer", MODEL)
    assert headers == ("code-reviewer", MODEL)
    assert text == raw.parse().choices[0].message.content


def test_an_unknown_public_name_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="llmmesh-poet", messages=[{"role": "user", "content": "hi"}])

    assert caught.value.code == "model_not_found"
