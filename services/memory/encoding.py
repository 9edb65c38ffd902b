"""What a memory (or a query) becomes for search: four representations, each ranking what
the others miss (measured on bench/recall.py; the README's memory section has the figures).

- `views`: one embedding per clause of the text. A chat message tells several things at once
  ("Okay so I finally did it, I bought a trumpet last weekend! Been wanting one since I was a
  kid"); its single embedding is the average of them all and resembles none. A question
  ("Which instrument does Fatima play?") is close to the one clause that answers it. Scored by
  the best clause (Qdrant's MaxSim with one query vector).
- `words`: one embedding per content word (stop words out), for late interaction: a query's
  words each find their closest word of the memory and the similarities add up (MaxSim with
  many query vectors) — "instrument" meets "trumpet", "relocating" meets "moving", where the
  texts share no word at all.
- `dense`: the text's own vector (the mean of its clause views): the whole-tenant index and
  near-duplicate removal.
- `terms`: BM25 (lexical.py): names, objects and rare words.

A clause is a sentence or a part of one cut at a comma, semicolon or a coordinating
conjunction, of two words at least. A leading speaker label ("Maya: ...") is kept on every
clause of a transcript line. Word embeddings are a function of the word alone, so each replica
keeps the latest ones in memory (never on disk: they hold no tenant's data but the words).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.memory import lexical
from services.memory.embedding import Embeddings
from services.memory.lexical import Terms

# The all-MiniLM-L6-v2 window is 256 word-pieces; a memory's first clauses and words carry it.
MAX_VIEWS = 8
MAX_WORDS = 24
# Query words at most (a long message is cut: its first content words count).
MAX_QUERY_WORDS = 12
WORD_CACHE = 100_000

_CLAUSE_END = re.compile(r"(?<=[.!?;,:])\s+|\s+(?:and|but|so|because|though|although|while)\s+", re.IGNORECASE)
_SPEAKER = re.compile(r"^\s*([A-Z][\w'.-]*(?: [A-Z][\w'.-]*){0,2}):\s+(?=\S)")
_WORD = re.compile(r"[^\W\d_][\w'-]*")


def clauses(text: str) -> list[str]:
    """The text's clauses (at most MAX_VIEWS); the whole text when it is one clause."""
    speaker = _SPEAKER.match(text)
    label, body = (f"{speaker.group(1)}: ", text[speaker.end() :]) if speaker else ("", text)
    parts = [p.strip() for p in _CLAUSE_END.split(body) if p and len(p.split()) >= 2]
    if len(parts) <= 1:
        return [text.strip()]
    return [label + p for p in parts[:MAX_VIEWS]]


def content_words(text: str, limit: int = MAX_WORDS) -> list[str]:
    """Distinct lower-case words that are not stop words (BM25's list), in order."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in seen and len(word) > 1 and lexical.query(word):
            seen[word] = None
            if len(seen) == limit:
                break
    return list(seen)


@dataclass(frozen=True)
class Encoded:
    """A text's representations (vectors L2-normalised)."""

    dense: list[float]
    views: list[list[float]]
    words: list[list[float]] = field(default_factory=list)
    terms: Terms = field(default_factory=lambda: Terms([], []))

    @classmethod
    def of_vector(cls, vector: Sequence[float], text: str = "") -> Encoded:
        """A text known by its one embedding: one view, no word vectors."""
        dense = [float(x) for x in vector]
        return cls(dense, [dense], [], lexical.document(text) if text else Terms([], []))


def _unit(vectors: Sequence[Sequence[float]]) -> list[float]:
    mean = np.asarray(vectors, dtype=np.float32).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm else mean).tolist()  # type: ignore[no-any-return]


class WordCache:
    """The embeddings of the latest `size` words used, shared by a replica's encoders (the
    indexer's words are then known to the queries)."""

    def __init__(self, size: int = WORD_CACHE) -> None:
        self.size = size
        self.vectors: OrderedDict[str, list[float]] = OrderedDict()


class Encoder:
    """Turns memories and queries into `Encoded` with the mesh's embedding model, in one
    Embed call per batch; word embeddings come from the cache when known there."""

    def __init__(self, embeddings: Embeddings, words: WordCache | None = None) -> None:
        self._embeddings = embeddings
        self.words = words or WordCache()
        self._cache = self.words.vectors

    async def documents(self, texts: Sequence[str]) -> list[Encoded]:
        pieces = [clauses(t) for t in texts]
        words = [content_words(t) for t in texts]
        vectors, known = await self._embed([p for ps in pieces for p in ps], [w for ws in words for w in ws])
        out = []
        at = 0
        for text, ps, ws in zip(texts, pieces, words, strict=True):
            views = vectors[at : at + len(ps)]
            at += len(ps)
            dense = views[0] if len(views) == 1 else _unit(views)
            out.append(Encoded(dense, views, [known[w] for w in ws], lexical.document(text)))
        return out

    async def query(self, text: str) -> Encoded:
        words = content_words(text, MAX_QUERY_WORDS)
        (vector,), known = await self._embed([text], words)
        return Encoded(vector, [vector], [known[w] for w in words], lexical.query(text))

    async def _embed(self, texts: list[str], words: list[str]) -> tuple[list[list[float]], dict[str, list[float]]]:
        """Embeds `texts` and whichever `words` are not cached yet (then cached); the texts'
        vectors and every word's."""
        missing = list(dict.fromkeys(w for w in words if w not in self._cache))
        vectors = await self._embeddings.embed([*texts, *missing]) if texts or missing else []
        known = dict(zip(missing, vectors[len(texts) :], strict=True))
        for word in words:
            if word not in known:
                known[word] = self._cache[word]
                self._cache.move_to_end(word)
        self._cache.update(known)
        while len(self._cache) > self.words.size:
            self._cache.popitem(last=False)
        return vectors[: len(texts)], known
