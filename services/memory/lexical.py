"""The lexical side of recall: BM25 over a memory's words, as a sparse vector that Qdrant
stores beside the dense one (both engines) and weighs by inverse document frequency itself
(the IDF modifier), over the tenant's own memories.

The dense vector (all-MiniLM-L6-v2) finds look-alikes; it ranks a rare name, object or place
no higher than any other word. BM25 does the opposite. The two rankings are fused by
reciprocal rank (see vectors.py), which needs no score calibration between them.

The encoder is qdrant-edge's own BM25 (English stop words, Snowball stemmer, lower case,
accents folded): a pure function of the text, the same for both engines. A text of stop
words only has no lexical vector.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import qdrant_edge as qe

# The sparse vector's name in both engines.
NAME = "lexical"
# Chat messages are short: about 20 word tokens once stop words are out.
AVERAGE_LENGTH = 20.0


@dataclass(frozen=True)
class Terms:
    """A sparse vector: hashed term ids and their weights."""

    indices: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.indices)


@functools.cache
def _model() -> qe.Bm25:
    return qe.Bm25(qe.Bm25Config(language="english", avg_len=AVERAGE_LENGTH, ascii_folding=True))


def document(text: str) -> Terms:
    """A stored text's terms, weighted by their frequency and the text's length."""
    vector = _model().embed_document(text)
    return Terms(list(vector.indices), list(vector.values))


def query(text: str) -> Terms:
    """A query's terms, each of weight 1 (IDF weighs them at search time)."""
    vector = _model().embed_query(text)
    return Terms(list(vector.indices), list(vector.values))
