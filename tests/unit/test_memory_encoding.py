"""What a memory becomes for search (services/memory/encoding.py), and what is not remembered."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.memory.core import worth_remembering
from services.memory.encoding import Encoder, WordCache, clauses, content_words


def test_a_message_is_cut_into_clauses_and_keeps_its_speaker_label() -> None:
    text = "Maya: Okay so I finally did it, I bought a trumpet last weekend! Been wanting one since I was a kid"
    assert clauses(text) == [
        "Maya: I finally did it,",
        "Maya: I bought a trumpet last weekend!",
        "Maya: Been wanting one since I was a kid",
    ]
    assert clauses("Finally got my cello back from the repair shop!") == [
        "Finally got my cello back from the repair shop!"
    ]
    assert clauses("ok") == ["ok"]


def test_content_words_leave_out_stop_words_and_repeats() -> None:
    assert content_words("Which instrument does Maya play? Maya plays the trumpet.") == [
        "instrument",
        "maya",
        "play",
        "plays",
        "trumpet",
    ]
    assert content_words("it is what it is") == []


class CountingEmbeddings:
    """A test double: a distinct unit vector per text, and the texts of each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[1.0 if i == hash(t) % 4 else 0.0 for i in range(4)] for t in texts]


async def test_words_are_embedded_once_and_shared_through_the_cache() -> None:
    embeddings = CountingEmbeddings()
    words = WordCache(size=100)
    indexer, queries = Encoder(embeddings, words), Encoder(embeddings, words)

    (memory,) = await indexer.documents(["Maya: I bought a trumpet, and it is loud"])
    assert embeddings.calls == [
        ["Maya: I bought a trumpet,", "Maya: and it is loud", "maya", "bought", "trumpet", "loud"]
    ]
    assert len(memory.views) == 2
    assert len(memory.words) == 4
    assert memory.terms

    probe = await queries.query("Which instrument is loud?")
    assert embeddings.calls[-1] == ["Which instrument is loud?", "instrument"]  # "loud" was known
    assert len(probe.words) == 2


async def test_the_word_cache_keeps_the_latest_words() -> None:
    embeddings = CountingEmbeddings()
    encoder = Encoder(embeddings, WordCache(size=3))
    await encoder.documents(["alpha bravo charlie delta"])
    assert list(encoder.words.vectors) == ["bravo", "charlie", "delta"]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (" tok" * 16, False),  # a stuck or placeholder generation
        ("the and of it", False),  # stop words only
        ("", False),
        ("Maya: Finally got my cello back!", True),
        ("yes yes yes", True),  # short: a reply, not a repetition
    ],
)
def test_what_is_worth_remembering(text: str, kept: bool) -> None:
    assert worth_remembering(text) is kept
