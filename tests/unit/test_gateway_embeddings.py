"""/v1/embeddings and /v1/models/{id} through the in-process mesh, with the official SDK: the
vectors are the mesh's one all-MiniLM-L6-v2 (served by the inference service's Embed RPC)."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from services.inference.embedder import Embedder
from services.inference.tokenizer import ChatTokenizer
from tests.unit.mesh import API_KEY, MODEL, Mesh, MeshOptions, in_process_mesh

EMBEDDING_MODEL = "all-minilm-l6-v2"


@pytest.fixture
async def mesh(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> AsyncIterator[Mesh]:
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, MeshOptions(indexer=False)) as m:
        yield m


@pytest.fixture
def sdk(mesh: Mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=API_KEY, max_retries=0)


async def test_the_sdk_gets_the_models_vectors(sdk: openai.AsyncOpenAI, embedder: Embedder) -> None:
    texts = ["How do I reset my password?", "I forgot my login credentials.", "Paris is in France."]

    reply = await sdk.embeddings.create(model=EMBEDDING_MODEL, input=texts)  # base64 on the wire

    assert [d.index for d in reply.data] == [0, 1, 2]
    vectors = [d.embedding for d in reply.data]
    expected, tokens = embedder.embed(texts)
    for got, want in zip(vectors, expected, strict=True):
        assert len(got) == 384
        assert math.isclose(sum(a * b for a, b in zip(got, want, strict=True)), 1.0, abs_tol=1e-5)
    assert sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True)) > sum(
        a * b for a, b in zip(vectors[0], vectors[2], strict=True)
    )
    assert reply.usage.prompt_tokens == tokens
    assert reply.model == EMBEDDING_MODEL


async def test_float_and_base64_encodings_agree(mesh: Mesh) -> None:
    body: dict[str, Any] = {"model": EMBEDDING_MODEL, "input": "one text"}
    as_float = (await mesh.http.post("/v1/embeddings", json={**body, "encoding_format": "float"})).json()
    as_base64 = (await mesh.http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()

    decoded = struct.unpack("<384f", base64.b64decode(as_base64["data"][0]["embedding"]))
    assert as_float["object"] == "list"
    assert as_float["data"][0]["object"] == "embedding"
    assert all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
        for a, b in zip(decoded, as_float["data"][0]["embedding"], strict=True)
    )


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL, "input": "x"}, 404, "model"),
        ({"model": EMBEDDING_MODEL, "input": [[1, 2, 3]]}, 400, "input"),
        ({"model": EMBEDDING_MODEL, "input": [1, 2, 3]}, 400, "input"),
        ({"model": EMBEDDING_MODEL, "input": ""}, 400, "input"),
        ({"model": EMBEDDING_MODEL, "input": []}, 400, "input"),
        ({"model": EMBEDDING_MODEL, "input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"model": EMBEDDING_MODEL, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": EMBEDDING_MODEL}, 400, "input"),
    ],
)
async def test_what_cannot_be_honoured_is_refused_naming_the_param(
    mesh: Mesh, body: dict[str, Any], status: int, param: str
) -> None:
    response = await mesh.http.post("/v1/embeddings", json=body)

    assert response.status_code == status
    assert response.json()["error"]["param"] == param


async def test_models_are_listed_and_fetched_one_by_one(sdk: openai.AsyncOpenAI) -> None:
    listed = [m.id for m in (await sdk.models.list()).data]
    assert MODEL in listed
    assert EMBEDDING_MODEL in listed

    model = await sdk.models.retrieve(EMBEDDING_MODEL)
    assert (model.id, model.object) == (EMBEDDING_MODEL, "model")
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("no-such-model")
