"""Embedder with the real packaged all-MiniLM-L6-v2 (small: it loads in a few seconds, once
for this module)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence

import pytest

from services.inference.embedder import EMBEDDING_MODEL_NAME, Embedder, packaged_model_dir


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(threads=2)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_packaged_model_is_found() -> None:
    assert (packaged_model_dir() / "model.safetensors").is_file()


def test_describes_itself(embedder: Embedder) -> None:
    assert embedder.name == EMBEDDING_MODEL_NAME == "all-minilm-l6-v2"
    assert embedder.dimensions == 384
    assert embedder.max_tokens == 256


def test_vectors_are_unit_length_one_per_text(embedder: Embedder) -> None:
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by four percent.", "x"]
    vectors, tokens = embedder.embed(texts)
    assert len(vectors) == len(texts)
    for vector in vectors:
        assert len(vector) == 384
        assert all(isinstance(value, float) for value in vector)
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)
    assert tokens == embedder.count_tokens(texts) > len(texts) * 2


def test_paraphrase_is_closer_than_an_unrelated_sentence(embedder: Embedder) -> None:
    (query, paraphrase, unrelated), _ = embedder.embed(
        [
            "What is the capital city of France?",
            "Which city is France's capital?",
            "My bicycle has a flat tyre again.",
        ]
    )
    assert cosine(query, paraphrase) > 0.7
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.3


def test_same_text_same_vector_whatever_the_batch(embedder: Embedder) -> None:
    alone, _ = embedder.embed(["remember that my sister is called Ada"])
    batched, _ = embedder.embed(["something else entirely", "remember that my sister is called Ada"] * 40)
    assert cosine(alone[0], batched[1]) > 0.9999
    assert cosine(alone[0], batched[-1]) > 0.9999


def test_token_count_grows_with_length_and_stops_at_max_tokens(embedder: Embedder) -> None:
    # "hello" is one word piece; [CLS] and [SEP] come on top.
    assert embedder.embed(["hello"])[1] == 3
    assert embedder.embed(["hello " * 10])[1] == 12
    assert embedder.embed(["hello " * 100])[1] == 102
    assert embedder.embed(["hello " * 1000])[1] == embedder.max_tokens
    assert embedder.embed(["hello", "hello " * 1000])[1] == 3 + embedder.max_tokens


def test_truncated_text_embeds_like_its_prefix(embedder: Embedder) -> None:
    """Past max_tokens the text is cut, not rejected: the tail changes nothing."""
    words = [f"word{i}" for i in range(2000)]
    (long, longer), _ = embedder.embed([" ".join(words[:1000]), " ".join(words)])
    assert cosine(long, longer) > 0.9999


def test_empty_input(embedder: Embedder) -> None:
    assert embedder.embed([]) == ([], 0)
    assert embedder.count_tokens([]) == 0


async def test_aembed_matches_embed(embedder: Embedder) -> None:
    texts = [f"note number {i} about the garden" for i in range(5)]
    expected, expected_tokens = embedder.embed(texts)
    results = await asyncio.gather(*(embedder.aembed([text]) for text in texts))
    assert [tokens for _, tokens in results] == [embedder.count_tokens([t]) for t in texts]
    assert sum(tokens for _, tokens in results) == expected_tokens
    for (vectors, _), want in zip(results, expected, strict=True):
        assert cosine(vectors[0], want) > 0.9999
    assert await embedder.aembed([]) == ([], 0)


async def test_aembed_runs_one_call_at_a_time(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = 0, 0
    guard = threading.Lock()
    real_embed = embedder.embed

    def tracked(texts: Sequence[str]) -> tuple[list[list[float]], int]:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.02)  # long enough for a second call to overlap, were it allowed to
        try:
            return real_embed(texts)
        finally:
            with guard:
                running -= 1

    monkeypatch.setattr(embedder, "embed", tracked)
    results = await asyncio.gather(*(embedder.aembed([f"text {i}"]) for i in range(6)))
    assert len(results) == 6
    assert most == 1
