"""Embedder with the real packaged all-MiniLM-L6-v2 (small: it loads in a few seconds, once
for this module)."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time

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


@pytest.fixture(scope="module")
def float32() -> Embedder:
    return Embedder.load(precision="float32")


@pytest.fixture(scope="module")
def bfloat16() -> Embedder:
    return Embedder.load(precision="bfloat16")


def test_the_traced_pass_gives_sentence_transformers_own_vectors(float32: Embedder) -> None:
    """The forward pass runs traced (for the GIL, see embedder.py): whatever the batch size
    and lengths, its vectors are those of sentence-transformers' own eager pipeline."""
    texts = ["hi", "What is the capital of France?", "word " * 300, "Ada, my sister, likes chess. " * 5]
    ours, _ = float32.embed(texts)
    theirs = float32._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert float32.precision == "float32"
    assert type(float32._direct).__name__ == "TopLevelTracedModule"
    for mine, reference in zip(ours, theirs.tolist(), strict=True):
        assert max(abs(a - b) for a, b in zip(mine, reference, strict=True)) < 1e-5


PASSAGES = [
    "My sister Ada lives in Lisbon and teaches chemistry.",
    "The deployment failed because the TLS certificate had expired.",
    "We planted tomatoes, basil and two rows of beans this spring.",
    "Quarterly revenue grew by four percent, driven by the new subscription plan.",
    "The cat refuses to eat anything but salmon since we moved.",
    "Our flight to Tokyo leaves on the 14th at 9:40 in the morning.",
]
QUERIES = {
    "where does my sister live": 0,
    "why did the release break": 1,
    "what is growing in the garden": 2,
    "how did sales do last quarter": 3,
    "what food does the pet like": 4,
    "when is the trip to Japan": 5,
}


def test_bfloat16_vectors_are_float32_ones_to_within_a_rounding(float32: Embedder, bfloat16: Embedder) -> None:
    """bfloat16 (chosen on CPUs that compute it natively) moves a vector by a cosine of about
    1e-4, and recall finds the same passage for every query."""
    import torch

    assert bfloat16.precision == "bfloat16"
    transformer = bfloat16._model[0].auto_model
    assert isinstance(transformer, torch.nn.Module)
    assert next(transformer.parameters()).dtype == torch.bfloat16
    texts = [*PASSAGES, *QUERIES, "hi", "word " * 300]
    exact, exact_tokens = float32.embed(texts)
    rounded, tokens = bfloat16.embed(texts)
    assert tokens == exact_tokens
    for a, b in zip(exact, rounded, strict=True):
        assert math.isclose(math.sqrt(sum(v * v for v in b)), 1.0, rel_tol=1e-4)
        assert 0.999 < cosine(a, b) < 1.0 + 1e-6
    passages = rounded[: len(PASSAGES)]
    for query, vector in zip(QUERIES, rounded[len(PASSAGES) :], strict=False):
        scores = [cosine(vector, passage) for passage in passages]
        assert scores.index(max(scores)) == QUERIES[query], query


def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.inference import embedder as module

    monkeypatch.setattr(module, "native_bfloat16", lambda: True)
    assert module.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(module, "native_bfloat16", lambda: False)
    assert module.resolve_precision("auto") == "float32"
    assert module.resolve_precision("bfloat16") == "bfloat16"
    assert module.resolve_precision("float32") == "float32"


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


async def test_aembed_batches_waiting_calls_one_batch_at_a_time(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that arrive while a batch is computed go together into the next one; a text asked
    twice is computed once; never two batches at once."""
    running, most = 0, 0
    batches: list[list[str]] = []
    guard = threading.Lock()
    real = embedder._embed_each

    def tracked(texts: list[str]) -> tuple[list[list[float]], list[int]]:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
            batches.append(list(texts))
        time.sleep(0.02)  # long enough for a second batch to overlap, were it allowed to
        try:
            return real(texts)
        finally:
            with guard:
                running -= 1

    monkeypatch.setattr(embedder, "_embed_each", tracked)
    texts = [f"text {i % 4}" for i in range(8)]  # each text asked twice
    results = await asyncio.gather(*(embedder.aembed([t]) for t in texts))

    assert most == 1
    assert sorted(t for batch in batches for t in batch) == sorted(set(texts))  # each computed once
    assert len(batches) <= 2
    for text, (vectors, tokens) in zip(texts, results, strict=True):
        assert cosine(vectors[0], embedder.embed([text])[0][0]) > 0.9999
        assert tokens == embedder.count_tokens([text])


async def test_a_cancelled_caller_leaves_the_shared_result_to_the_others(embedder: Embedder) -> None:
    first = asyncio.ensure_future(embedder.aembed(["the same question"]))
    second = asyncio.ensure_future(embedder.aembed(["the same question"]))
    await asyncio.sleep(0)
    first.cancel()

    vectors, tokens = await second

    assert len(vectors) == 1
    assert tokens == embedder.count_tokens(["the same question"])


async def test_a_failed_batch_fails_its_callers_and_not_the_next(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = embedder._embed_each

    def broken(texts: list[str]) -> tuple[list[list[float]], list[int]]:
        raise RuntimeError("fault injected")

    monkeypatch.setattr(embedder, "_embed_each", broken)
    with pytest.raises(RuntimeError, match="fault injected"):
        await embedder.aembed(["a"])
    monkeypatch.setattr(embedder, "_embed_each", real)
    vectors, _ = await embedder.aembed(["a"])
    assert len(vectors) == 1


async def test_a_query_does_not_wait_behind_a_background_batch(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indexer's turns go to the background lane, on a thread of its own in the idle
    scheduling class; a chat turn's query is computed meanwhile on the query lane."""
    release = threading.Event()
    policy: dict[str, int] = {}
    real = embedder._embed_each

    def held(texts: list[str]) -> tuple[list[list[float]], list[int]]:
        policy[texts[0]] = os.sched_getscheduler(0)
        if texts[0].startswith("turn"):
            release.wait(10)
        return real(texts)

    monkeypatch.setattr(embedder, "_embed_each", held)
    background = asyncio.ensure_future(embedder.aembed(["turn to index"], background=True))
    await asyncio.sleep(0.05)
    vectors, _ = await asyncio.wait_for(embedder.aembed(["a query"]), 5)  # not held up
    still_running = not background.done()
    release.set()
    await background

    assert len(vectors) == 1
    assert still_running
    assert policy["turn to index"] == os.SCHED_IDLE  # runs only on cores nothing else wants
    assert policy["a query"] == os.SCHED_OTHER


async def test_background_batches_wait_while_serving_is_busy_and_no_longer_than_allowed() -> None:
    """The indexer's turns wait while an engine generates (up to the limit per batch); a query
    never waits for it. Its own embedder: the deferral is set on the instance."""
    embedder = Embedder.load()
    try:
        busy = True
        embedder.defer_background(lambda: busy, max_s=30)
        background = asyncio.ensure_future(embedder.aembed(["turn to index"], background=True))
        vectors, _ = await asyncio.wait_for(embedder.aembed(["a query"]), 5)
        await asyncio.sleep(0.3)
        waited = not background.done()
        busy = False
        await asyncio.wait_for(background, 5)

        embedder.defer_background(lambda: True, max_s=0.2)  # busy for good: the limit ends the wait
        started = time.monotonic()
        await asyncio.wait_for(embedder.aembed(["another turn"], background=True), 5)
        bounded = time.monotonic() - started
    finally:
        embedder.close()

    assert len(vectors) == 1
    assert waited
    assert 0.2 <= bounded < 3
