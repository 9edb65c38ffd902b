"""Knowledge for retrieval: documents a tenant adds to named collections, cut into passages,
embedded by the mesh's one embedding model and searched by the agents that have retrieval on.

Passages are cut by paragraphs, then sentences, then words, to at most CHUNK_MAX_TOKENS: the
embedding model (all-MiniLM-L6-v2) reads 256 word-pieces and drops the rest, so a longer
passage would be stored with an embedding of its beginning only. A passage ends at a paragraph
break once it holds CHUNK_MIN_TOKENS, and the next one starts with up to OVERLAP_TOKENS of its
last sentences, so a fact that straddles a cut is whole in one of the two.

Tokens are estimated, not counted: 1.2 per word plus 1 per punctuation mark, what word-piece
and BPE tokenizers make of English (within 15% of MiniLM's own count on prose and on markdown
full of code and tables, where a words-only rule undercounts by half). The memory service
holds no tokenizer, the counts serve two models (the embedder's window and the chat model's
prompt) with different tokenizers, and a chunk size or a cap only needs to be about right.

Point ids derive from tenant, collection, document and chunk index, so adding a document again
writes over its passages, and those of a longer earlier version are removed after.
"""

from __future__ import annotations

import itertools
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import grpc
from prometheus_client import Counter

from services.common.errors import InvalidArgumentError, MeshError
from services.memory.embedding import Embeddings
from services.memory.vectors import DocumentInfo, Passage, ScoredPassage, VectorStore

SEARCHES = Counter(
    "llmmesh_memory_knowledge_searches_total",
    "SearchKnowledge calls answered, by outcome: found, none (none close enough) or no_collection.",
    ["outcome"],
)
PASSAGES_WRITTEN = Counter("llmmesh_memory_knowledge_passages_written_total", "Knowledge passages embedded and stored.")

CHUNK_MAX_TOKENS = 220
CHUNK_MIN_TOKENS = 150
OVERLAP_TOKENS = 40
# Passages per Embed call: a large document is embedded in turns, so the queries that routing
# and recall embed meanwhile (the same model) wait for one batch at most.
EMBED_BATCH = 32

COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_DOCUMENT_NAME = 256
MAX_DOCUMENTS = 100
MAX_TEXT_BYTES = 8 * 1024 * 1024
MAX_QUERY = 8000
MAX_TOP_K = 20

_IDS = uuid.UUID("3c1f7a52-0d4e-4b8a-9e61-2f5d8c7b1a40")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WORD = re.compile(r"\w+")
_MARK = re.compile(r"[^\w\s]")
# The whitespace after . ! ? (or after one of those and a closing quote or bracket): where a
# sentence may end. Captured, so that a line break between sentences is kept.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))(\s+)")


def estimate_tokens(text: str) -> int:
    """About how many tokens `text` is to a BPE or word-piece tokenizer (see the module doc)."""
    return math.ceil(1.2 * len(_WORD.findall(text)) + len(_MARK.findall(text)))


def passage_id(tenant: str, collection: str, document: str, chunk: int) -> str:
    return str(uuid.uuid5(_IDS, f"{tenant}\x00{collection}\x00{document}\x00{chunk}"))


@dataclass(frozen=True)
class _Piece:
    """A sentence (or part of one), and what separates it from the text before it: a blank
    line (it opens a paragraph), a line break or a space."""

    text: str
    tokens: int
    after: str

    @property
    def opens_paragraph(self) -> bool:
        return self.after == "\n\n"


def _pieces(text: str) -> list[_Piece]:
    """The text as sentences, each at most CHUNK_MAX_TOKENS (a longer one is cut by words)."""
    pieces: list[_Piece] = []
    for paragraph in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")):
        after = "\n\n"
        parts = _SENTENCE_END.split(paragraph.strip())
        for sentence, gap in itertools.zip_longest(parts[::2], parts[1::2], fillvalue=""):
            for part in _by_words(sentence.strip()):
                pieces.append(_Piece(part, estimate_tokens(part), after))
                after = " "
            after = "\n" if "\n" in gap else " "
    return pieces


def _by_words(sentence: str) -> list[str]:
    if not sentence:
        return []
    if estimate_tokens(sentence) <= CHUNK_MAX_TOKENS:
        return [sentence]
    parts: list[str] = []
    words: list[str] = []
    for word in sentence.split():
        word = word[: CHUNK_MAX_TOKENS // 2]  # a "word" of thousands of characters (a URL, base64)
        if words and estimate_tokens(" ".join([*words, word])) > CHUNK_MAX_TOKENS:
            parts.append(" ".join(words))
            words = []
        words.append(word)
    return [*parts, " ".join(words)] if words else parts


def _join(pieces: Sequence[_Piece]) -> str:
    return "".join((piece.after if i else "") + piece.text for i, piece in enumerate(pieces))


def chunk(text: str) -> list[str]:
    """The passages of a document, in order (see the module doc)."""
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    size = 0
    for piece in _pieces(text):
        full = size + piece.tokens > CHUNK_MAX_TOKENS
        at_break = piece.opens_paragraph and size >= CHUNK_MIN_TOKENS
        if current and (full or at_break):
            chunks.append(current)
            current = _overlap(current, piece.tokens)
            size = sum(p.tokens for p in current)
        current.append(piece)
        size += piece.tokens
    if current:
        chunks.append(current)
    return [_join(c) for c in chunks]


def _overlap(previous: Sequence[_Piece], room_for: int) -> list[_Piece]:
    """The last sentences of `previous`, up to OVERLAP_TOKENS, to start the next passage with
    (none when they would leave no room for the sentence that follows)."""
    kept: list[_Piece] = []
    size = 0
    for piece in reversed(previous[1:]):  # never the whole previous passage
        if size + piece.tokens > OVERLAP_TOKENS:
            break
        kept.insert(0, piece)
        size += piece.tokens
    return [] if size + room_for > CHUNK_MAX_TOKENS else kept


def within_tokens(found: Sequence[ScoredPassage], max_tokens: int) -> list[ScoredPassage]:
    """Best first, as many as fit in `max_tokens` (0: all); one that would overflow is left out
    and the next tried. When not even one fits, the best comes back cut to the cap."""
    if not max_tokens:
        return list(found)
    kept: list[ScoredPassage] = []
    used = 0
    for hit in found:
        if used + hit.passage.tokens <= max_tokens:
            kept.append(hit)
            used += hit.passage.tokens
    if kept or not found:
        return kept
    best = found[0]
    words = best.passage.text.split()
    while words and estimate_tokens(" ".join(words)) > max_tokens:
        words.pop()
    if not words:
        return []
    text = " ".join(words)
    return [ScoredPassage(replace(best.passage, text=text, tokens=estimate_tokens(text)), best.score)]


@dataclass(frozen=True)
class Added:
    name: str
    chunks: int
    tokens: int
    removed_chunks: int


def unknown_collection(collection: str) -> MeshError:
    return MeshError(
        grpc.StatusCode.NOT_FOUND, f"No knowledge collection '{collection}' in this tenant.", "collection_not_found"
    )


def check_collection(collection: str) -> None:
    if not COLLECTION_NAME.fullmatch(collection):
        raise InvalidArgumentError(
            "collection must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", "collection"
        )


class Knowledge:
    """The knowledge RPCs in domain terms, over the vector store and the embedding model."""

    def __init__(self, vectors: VectorStore, embeddings: Embeddings) -> None:
        self._vectors = vectors
        self._embeddings = embeddings

    async def add(self, tenant: str, collection: str, documents: Sequence[tuple[str, str]]) -> list[Added]:
        """Cuts, embeds and stores each (name, text); every document is checked before any is
        stored, and all are embedded before the first is written."""
        check_collection(collection)
        if not 1 <= len(documents) <= MAX_DOCUMENTS:
            raise InvalidArgumentError(f"send 1 to {MAX_DOCUMENTS} documents", "documents")
        if sum(len(text.encode()) for _, text in documents) > MAX_TEXT_BYTES:
            raise InvalidArgumentError(f"the documents hold more than {MAX_TEXT_BYTES} bytes of text", "documents")
        seen: set[str] = set()
        cut: list[list[str]] = []
        for index, (name, text) in enumerate(documents):
            if not name.strip() or len(name) > MAX_DOCUMENT_NAME or name in seen:
                problem = "appears twice" if name in seen else f"must be 1-{MAX_DOCUMENT_NAME} characters"
                raise InvalidArgumentError(f"document name {name!r} {problem}", f"documents[{index}].name")
            seen.add(name)
            cut.append(chunk(text))
            if not cut[-1]:
                raise InvalidArgumentError(f"document {name!r} has no text", f"documents[{index}].text")
        texts = [c for chunks in cut for c in chunks]
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            vectors += await self._embeddings.embed(texts[start : start + EMBED_BATCH])
        added_at = int(time.time())
        result: list[Added] = []
        offset = 0
        for (name, _), chunks in zip(documents, cut, strict=True):
            passages = [
                Passage(
                    passage_id(tenant, collection, name, index),
                    tenant,
                    collection,
                    name,
                    index,
                    text,
                    estimate_tokens(text),
                    added_at,
                )
                for index, text in enumerate(chunks)
            ]
            own = vectors[offset : offset + len(chunks)]
            offset += len(chunks)
            removed = await self._vectors.replace_document(tenant, collection, name, passages, own)
            PASSAGES_WRITTEN.inc(len(passages))
            result.append(Added(name, len(passages), sum(p.tokens for p in passages), removed))
        return result

    async def documents(self, tenant: str, collection: str) -> list[DocumentInfo]:
        if collection:
            check_collection(collection)
        return await self._vectors.documents(tenant, collection)

    async def delete(self, tenant: str, collection: str, document: str) -> int:
        check_collection(collection)
        removed = await self._vectors.delete_passages(tenant, collection, document)
        if removed:
            return removed
        if document and await self._vectors.documents(tenant, collection):
            raise MeshError(
                grpc.StatusCode.NOT_FOUND,
                f"No document '{document}' in knowledge collection '{collection}'.",
                "document_not_found",
            )
        raise unknown_collection(collection)

    async def search(
        self, tenant: str, collection: str, query: str, *, top_k: int, max_tokens: int, min_score: float
    ) -> list[ScoredPassage]:
        check_collection(collection)
        if not query.strip():
            raise InvalidArgumentError("query must not be blank", "query")
        if not 0 <= top_k <= MAX_TOP_K:
            raise InvalidArgumentError(f"top_k must be between 1 and {MAX_TOP_K} (0: 5)", "top_k")
        if max_tokens < 0:
            raise InvalidArgumentError("max_tokens must be 0 (no cap) or more", "max_tokens")
        if not -1 <= min_score <= 1:
            raise InvalidArgumentError("min_score must be between -1 and 1", "min_score")
        # The embedder reads the first 256 word-pieces: a longer query is cut, not refused.
        (vector,) = await self._embeddings.embed([query[:MAX_QUERY]])
        threshold = min_score or -1.0  # 0: any passage
        found = await self._vectors.search_passages(tenant, collection, vector, limit=top_k or 5, threshold=threshold)
        # Nothing found: either nothing passed min_score, or there is no such collection.
        if not found and not await self._vectors.search_passages(tenant, collection, vector, limit=1, threshold=-1.0):
            SEARCHES.labels("no_collection").inc()
            raise unknown_collection(collection)
        SEARCHES.labels("found" if found else "none").inc()
        return within_tokens(found, max_tokens)
