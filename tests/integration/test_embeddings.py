"""/v1/embeddings through Envoy with the official SDK, on the real stack."""

from __future__ import annotations

import openai
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

EMBEDDING_MODEL = "all-minilm-l6-v2"


def test_embeddings_through_envoy(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=60)

    reply = client.embeddings.create(
        model=EMBEDDING_MODEL, input=["The cat sat on the mat.", "A kitten rested on a rug."]
    )

    assert [len(d.embedding) for d in reply.data] == [384, 384]
    similarity = sum(a * b for a, b in zip(reply.data[0].embedding, reply.data[1].embedding, strict=True))
    assert similarity > 0.5
    assert reply.usage.prompt_tokens > 10
    assert client.models.retrieve(EMBEDDING_MODEL).id == EMBEDDING_MODEL
