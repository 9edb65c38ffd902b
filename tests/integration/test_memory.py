"""Memory through Envoy on the real stack (vLLM on SmolLM2, valkey, embedded Qdrant, the
indexer): a long session that never overflows, sessions and memories over REST, erasure."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

WORDS = ["river", "copper", "lantern", "orchard", "violin", "harbor", "meadow", "falcon", "granite", "velvet"]


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=60, headers=stack.auth)


def wait_for_memory(http: httpx.Client, session_id: str, text: str, timeout_s: float = 90) -> list[dict[str, Any]]:
    """The indexer runs off the request path: poll until the text is a memory."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        memories: list[dict[str, Any]] = http.get("/memories", params={"session_id": session_id}).json()["data"]
        if any(m["text"] == text for m in memories):
            return memories
        time.sleep(0.5)
    raise AssertionError(f"{text!r} was not indexed within {timeout_s} s")


def test_a_long_session_never_exceeds_the_context(client: openai.OpenAI) -> None:
    """~1,000-token turns against an 8,192-token context: without trimming, turn 9 on would be
    context_length_exceeded. (The fast tier runs 30 such turns with the same tokenizer.)"""
    session = f"long-{uuid.uuid4().hex[:8]}"
    rng = random.Random(3)
    prompt_tokens = []
    for turn in range(10):
        text = f"Note {turn}: " + " ".join(rng.choice(WORDS) for _ in range(1000))
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            max_tokens=2,
            temperature=0,
            extra_body={"session_id": session},
        )
        assert reply.usage is not None
        assert reply.usage.prompt_tokens + 2 <= 8192
        prompt_tokens.append(reply.usage.prompt_tokens)
    # The history grew turn by turn until it had to be cut, then was cut to about half at once.
    drops = [(a, b) for a, b in itertools.pairwise(prompt_tokens) if b < a]
    assert len(drops) == 1
    before, after = drops[0]
    assert after <= before * 0.7


def test_sessions_and_memories_over_rest_and_total_erasure(client: openai.OpenAI, http: httpx.Client) -> None:
    created = http.post("/sessions", json={"system_prompt": "You are terse.", "metadata": {"app": "test"}})
    assert created.status_code == 200
    session = created.json()["id"]
    fact = "My favourite mountain is the Matterhorn."
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": fact}],
        max_tokens=8,
        temperature=0,
        extra_body={"session_id": session},
    )
    wait_for_memory(http, session, fact)

    found = http.post("/memories/search", json={"query": "Which mountain do I like?", "session_id": session})
    assert found.json()["data"][0]["text"] == fact
    detail = http.get(f"/sessions/{session}").json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["system_prompt"] == "You are terse."
    assert session in [s["id"] for s in http.get("/sessions", params={"limit": 100}).json()["data"]]

    assert http.delete(f"/sessions/{session}").json()["deleted"] is True

    assert http.get(f"/sessions/{session}").status_code == 404
    assert http.get("/memories", params={"session_id": session}).json()["data"] == []
    after = http.post("/memories/search", json={"query": "Which mountain do I like?"}).json()["data"]
    assert fact not in [m["text"] for m in after]
    assert http.delete(f"/sessions/{session}").status_code == 404


def test_unknown_session_and_memory_are_404_in_openai_shape(http: httpx.Client) -> None:
    for response in (http.get("/sessions/nope"), http.delete(f"/memories/{uuid.uuid4()}")):
        assert response.status_code == 404
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    bad = http.post("/memories/search", json={"query": ""})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "query"
