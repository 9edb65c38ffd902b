"""Long-term memory: one vector per stored message (all-MiniLM-L6-v2: 384 dimensions, cosine,
L2-normalised) with the message as its payload, in Qdrant. Two engines behind one interface:

- `EdgeVectorStore`: Qdrant's engine in this process (qdrant-edge), one shard in a folder,
  for a single node (`make run`).
- `ServerVectorStore`: a Qdrant server over qdrant-client, what Kubernetes runs.

Every read and every delete filters on `tenant`, and an upsert never overwrites a point of
another tenant: an id of another tenant is neither found, nor removed, nor replaced.

The index is Qdrant's multitenancy layout: no global HNSW graph (m=0), one graph per tenant
(payload_m) over the `tenant` field, and payload indexes on the fields recall filters by. A
recall narrowed to a session and a user selects few points, which Qdrant scores exactly
through the payload indexes; the graphs serve searches over a whole tenant.

Knowledge (documents added for retrieval, one passage per point) lives beside the memories,
never among them: in its own shard (embedded engine) or its own collection (server), with
the same tenant rules. A memory call cannot reach a passage, nor a knowledge call a memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import grpc
import httpx
import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.conversions.common_types import PointId
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import InvalidArgumentError
from services.memory import lexical
from services.memory.encoding import Encoded

if TYPE_CHECKING:
    from qdrant_edge import ConditionType as EdgeCondition

log = logging.getLogger(__name__)

DIMS = 384
DEFAULT_COLLECTION = "llmmesh_memories"
KEYWORD_FIELDS = ("tenant", "session_id", "user")
INTEGER_FIELDS = ("seq", "created_at")
KNOWLEDGE_KEYWORD_FIELDS = ("tenant", "collection", "document")
KNOWLEDGE_INTEGER_FIELDS = ("chunk",)
# What a knowledge listing reads of each passage (never its text).
_LISTING_FIELDS = ["collection", "document", "chunk", "tokens", "added_at"]
_SCROLL_PAGE = 1000
# Values a count by field returns at most (users or sessions of one tenant, for retention).
_FACET_LIMIT = 100_000
HNSW_PAYLOAD_M = 16
HNSW_EF_CONSTRUCT = 100
# Below this many KB of vectors a filtered search scores the selected points exactly.
FULL_SCAN_THRESHOLD_KB = 10_000
# Views and words have no graph: always scored exactly, point by point.
EXACT_ALWAYS_KB = 2**31 - 1
# Points sharing one `created_at` fetched at most, when a listing page ends inside that second.
_SAME_SECOND_MAX = 10_000
# Hybrid ranking (encoding.py has the representations): the best candidates of each ranking,
# CANDIDATES of each, fused by reciprocal rank, score = sum of weight / (RRF_K + rank). Measured
# on the recall evaluation (bench/recall.py); see the README's memory section.
#
# Within a user or a session (search and recall of a chat turn): clause views and words. BM25
# takes no part there: with the words in, every weight tried lowered hit@10 (1: -10 points,
# 0.25: -4.6), because the memories that share a word with the question are the words' own top
# ones already, and a second vote for them pushes down the paraphrased evidence. Over a whole
# tenant (no views or words: they are scored point by point), the dense index and BM25.
CANDIDATES = 100
RRF_K = 60
VIEWS_WEIGHT = 1.0
WORDS_WEIGHT = 2.0
SCOPED_LEXICAL_WEIGHT = 0.0
DENSE_WEIGHT = 1.0
LEXICAL_WEIGHT = 1.0
# Named vectors of a memory point beside the unnamed dense one.
VIEWS = "views"
WORDS = "words"
# Engines compare a score with the threshold in float32, some with `>`: ask for a little more
# and keep `score >= threshold` here, the same on every engine.
_THRESHOLD_SLACK = 1e-6

T = TypeVar("T")
A = TypeVar("A")
C = TypeVar("C")  # a filter condition, in the engine's types
F = TypeVar("F")  # a filter, in the engine's types
R = TypeVar("R", "MemoryRecord", "Passage")  # what a point's payload holds


@dataclass(frozen=True)
class MemoryRecord:
    """One stored message: the point's id and payload."""

    id: str  # a UUID string
    tenant: str
    session_id: str
    user: str  # "" when none
    role: str  # "user" | "assistant"
    text: str
    seq: int  # turn position in its session (>= 1)
    turn_id: str
    created_at: int  # unix seconds


@dataclass(frozen=True)
class Ranking(Generic[F]):
    """One hybrid query: the candidates `where` selects whose best clause is at least
    `dense_floor` close (cosine), or whose BM25 score is at least `lexical_floor` (> 0), or
    whose words are on average at least `word_floor` close to the query's, fused by reciprocal
    rank. Views and words take part when the query is `scoped` to a user or a session (they
    are scored exactly, point by point); over a whole tenant the dense index stands in. BM25's
    IDF is computed over the points `where` selects (never another tenant's): a word is rare or
    common among the memories searched, e.g. a speaker's own name is in half of their lines."""

    query: Encoded
    where: F
    limit: int
    dense_floor: float
    lexical_floor: float
    word_floor: float
    scoped: bool
    with_vectors: bool

    @property
    def words_floor_total(self) -> float | None:
        """The words' floor as the engine scores them (a sum over the query's words)."""
        return self.word_floor * len(self.query.words) if self.word_floor else None


@dataclass(frozen=True)
class ScoredRecord:
    record: MemoryRecord
    score: float
    vector: list[float] | None = None  # only when asked for (near-duplicate removal)


@dataclass(frozen=True)
class Passage:
    """One chunk of a knowledge document: the point's id and payload."""

    id: str  # a UUID string
    tenant: str
    collection: str
    document: str  # the document's name, unique in its collection
    chunk: int  # position in the document, from 0
    text: str
    tokens: int  # estimated (see services/memory/knowledge.py)
    added_at: int  # unix seconds


@dataclass(frozen=True)
class ScoredPassage:
    passage: Passage
    score: float


@dataclass(frozen=True)
class DocumentInfo:
    """A document of a knowledge collection, as listed."""

    collection: str
    document: str
    chunks: int
    tokens: int
    added_at: int  # unix seconds, when it was last added


class VectorStoreUnavailable(Exception):  # noqa: N818 (the name callers know it by)
    """The vector store could not be reached (or did not answer in time): callers degrade."""


class VectorStore(Protocol):
    async def upsert(self, records: Sequence[MemoryRecord], vectors: Sequence[Sequence[float] | Encoded]) -> None:
        """Writes memories, each with its representations (a plain vector: one view, no words)."""
        ...

    async def search(
        self,
        tenant: str,
        vector: Sequence[float] | Encoded,
        *,
        limit: int,
        session_id: str = "",
        user: str = "",
        threshold: float = 0.0,
        with_vectors: bool = False,
        text: str = "",
        lexical_floor: float = 0.0,
        word_floor: float = 0.0,
    ) -> list[ScoredRecord]:
        """Best first within a tenant, optionally narrowed to one session and/or one user.

        A plain vector without `text`: by cosine, score >= threshold. An `Encoded` query (or a
        vector with `text`): hybrid (see `Ranking`; threshold is the dense floor); score is
        then the fused one."""
        ...

    async def recall(
        self,
        tenant: str,
        vector: Sequence[float] | Encoded,
        *,
        session_id: str,
        before_seq: int,
        user: str,
        limit: int,
        threshold: float,
        with_vectors: bool = False,
        text: str = "",
        lexical_floor: float = 0.0,
        word_floor: float = 0.0,
    ) -> list[ScoredRecord]:
        """Best first among the tenant's memories that are either of this session before
        `before_seq`, or of the same (non-empty) user in other sessions; ranked as `search`."""
        ...

    async def get(self, tenant: str, ids: Sequence[str]) -> list[MemoryRecord]: ...

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        """Removes those of `ids` the tenant has; returns how many there were."""
        ...

    async def delete_session(self, tenant: str, session_id: str) -> int: ...

    async def count(self, tenant: str = "") -> int: ...

    # -- retention
    async def counts(self, field: str, tenant: str = "") -> dict[str, int]:
        """Memories per value of `field` ("tenant", "user" or "session_id"), within a tenant or all."""
        ...

    async def oldest(
        self, tenant: str, *, limit: int, user: str = "", session_id: str = "", before: int = 0
    ) -> list[MemoryRecord]:
        """Up to `limit` of the tenant's memories (of one user and/or session), the earliest
        first; `before`: only those created before it (unix seconds)."""
        ...

    # -- knowledge: passages of documents, kept apart from the memories
    async def replace_document(
        self,
        tenant: str,
        collection: str,
        document: str,
        passages: Sequence[Passage],
        vectors: Sequence[Sequence[float]],
    ) -> int:
        """Writes the passages of one document (chunks 0..n-1, in order) and removes its chunks
        from n on, which a longer earlier version left; returns how many were removed."""
        ...

    async def search_passages(
        self, tenant: str, collection: str, vector: Sequence[float], *, limit: int, threshold: float = 0.0
    ) -> list[ScoredPassage]:
        """Best first among the passages of one collection of the tenant, score >= threshold."""
        ...

    async def documents(self, tenant: str, collection: str = "") -> list[DocumentInfo]:
        """The tenant's documents (of one collection, or of all), by collection then name."""
        ...

    async def delete_passages(self, tenant: str, collection: str, document: str = "") -> int:
        """Removes a whole collection, or one document of it; returns how many passages there were."""
        ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...

    # Last: a method named `list` hides the builtin from the annotations after it.
    async def list(
        self, tenant: str, *, session_id: str = "", user: str = "", limit: int = 20, after: str = ""
    ) -> tuple[list[MemoryRecord], bool]:
        """One page (and whether more follow) ordered by (created_at, id); `after` is the last
        id of the previous page. At least one of session_id and user is required."""
        ...


def open_vector_store(
    url: str,
    path: Path,
    dims: int = DIMS,
    api_key: str | None = None,
    *,
    timeout_s: float = 2.0,
    optimize_after: int = 20_000,
) -> VectorStore:
    """A Qdrant server when `url` is set, else the embedded engine in the folder `path`."""
    if url:
        return ServerVectorStore.from_url(url, api_key, dims=dims, timeout_s=timeout_s)
    return EdgeVectorStore(path, dims, optimize_after=optimize_after)


def _point_id(value: str) -> str | None:
    """The canonical form of a UUID string; None for anything else (no such point exists)."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


def _payload(record: MemoryRecord | Passage) -> dict[str, Any]:
    payload = asdict(record)
    del payload["id"]
    return payload


def _from_payload(kind: type[R], point_id: object, payload: Mapping[str, Any] | None) -> R:
    """A `kind` from a point: its id, and every other field from the payload (0 or "" when missing)."""
    p = payload or {}
    values: dict[str, Any] = {"id": str(point_id)}
    for f in fields(kind):
        if f.name != "id":
            values[f.name] = int(p.get(f.name, 0)) if f.type == "int" else str(p.get(f.name, ""))
    return kind(**values)


def _record(point_id: object, payload: Mapping[str, Any] | None) -> MemoryRecord:
    return _from_payload(MemoryRecord, point_id, payload)


def _passage(point_id: object, payload: Mapping[str, Any] | None) -> Passage:
    return _from_payload(Passage, point_id, payload)


def _documents(payloads: Sequence[Mapping[str, Any]]) -> list[DocumentInfo]:
    """Passages' payloads summed up by document."""
    found: dict[tuple[str, str], DocumentInfo] = {}
    for p in payloads:
        key = (str(p.get("collection", "")), str(p.get("document", "")))
        seen = found.get(key, DocumentInfo(*key, chunks=0, tokens=0, added_at=0))
        found[key] = replace(
            seen,
            chunks=seen.chunks + 1,
            tokens=seen.tokens + int(p.get("tokens", 0)),
            added_at=max(seen.added_at, int(p.get("added_at", 0))),
        )
    return [found[key] for key in sorted(found)]


def _floats(vector: object) -> list[float] | None:
    """The point's vector as the engine returns it: a list of floats (None for anything else)."""
    return vector if isinstance(vector, list) and (not vector or isinstance(vector[0], float)) else None


def _edge_vectors(encoded: Encoded) -> dict[str, qe.NamedVector]:
    """A memory's vectors for the embedded engine (see encoding.py)."""
    vectors: dict[str, qe.NamedVector] = {"": encoded.dense, VIEWS: encoded.views}
    if encoded.words:
        vectors[WORDS] = encoded.words
    if encoded.terms:
        vectors[lexical.NAME] = qe.SparseVector(encoded.terms.indices, encoded.terms.values)
    return vectors


def _dense_of(vector: object) -> object:
    """The dense vector of a point whose vectors come back by name."""
    return vector.get("") if isinstance(vector, dict) else vector


def _as_list(vector: Sequence[float]) -> list[float]:
    if isinstance(vector, list):
        return vector
    tolist = getattr(vector, "tolist", None)  # numpy rows convert in one call
    values: list[float] = tolist() if callable(tolist) else [float(x) for x in vector]
    return values


def _order(record: MemoryRecord) -> tuple[int, str]:
    return record.created_at, record.id


class _QdrantStore(ABC, Generic[C, F]):
    """The interface in terms of a few engine primitives; both engines speak Qdrant's filter
    language, each in its own types."""

    dims: int

    # -- filters, in the engine's types
    @abstractmethod
    def _match(self, key: str, value: str | int) -> C: ...

    @abstractmethod
    def _range(self, key: str, *, gt: int | None = None, lt: int | None = None) -> C: ...

    @abstractmethod
    def _has_ids(self, ids: Sequence[str]) -> C: ...

    @abstractmethod
    def _filter(self, must: Sequence[C], should: Sequence[C] = (), must_not: Sequence[C] = ()) -> F: ...

    @abstractmethod
    def _nest(self, where: F) -> C: ...

    # -- engine calls
    @abstractmethod
    async def _upsert(self, tenant: str, records: Sequence[MemoryRecord], encoded: Sequence[Encoded]) -> None:
        """Writes points of one tenant; an existing point of another tenant stays as it is."""

    @abstractmethod
    async def _query(
        self, vector: list[float], where: F, limit: int, threshold: float, with_vectors: bool
    ) -> list[ScoredRecord]:
        """The nearest points by the dense vector, cosine >= threshold."""

    @abstractmethod
    async def _fused(self, ranking: Ranking[F]) -> list[ScoredRecord]:
        """The hybrid ranking (see `Ranking`)."""

    @abstractmethod
    async def _scroll(self, where: F, limit: int, by_time: bool) -> list[MemoryRecord]:
        """Up to `limit` points; by_time: the earliest `created_at` first (ties in any order)."""

    @abstractmethod
    async def _retrieve(self, ids: Sequence[str]) -> list[MemoryRecord]: ...

    @abstractmethod
    async def _delete(self, where: F) -> None: ...

    @abstractmethod
    async def _count(self, where: F | None) -> int: ...

    @abstractmethod
    async def _facet(self, field: str, where: F | None) -> dict[str, int]:
        """Points per value of a keyword field, among those `where` selects."""

    # -- engine calls on the knowledge points (another shard or collection)
    @abstractmethod
    async def _write_passages(self, tenant: str, passages: Sequence[Passage], vectors: Sequence[list[float]]) -> None:
        """Writes passages of one tenant; an existing point of another tenant stays as it is."""

    @abstractmethod
    async def _query_passages(
        self, vector: list[float], where: F, limit: int, threshold: float
    ) -> list[ScoredPassage]: ...

    @abstractmethod
    async def _passage_payloads(self, where: F, fields: list[str]) -> list[dict[str, Any]]:
        """Those fields of the payload of every passage `where` selects."""

    @abstractmethod
    async def _delete_passages(self, where: F) -> None: ...

    @abstractmethod
    async def _count_passages(self, where: F) -> int: ...

    # -- the interface
    def _vector(self, vector: Sequence[float]) -> list[float]:
        values = _as_list(vector)
        if len(values) != self.dims:
            raise ValueError(f"a vector has {len(values)} dimensions, the store holds {self.dims}")
        return values

    async def upsert(self, records: Sequence[MemoryRecord], vectors: Sequence[Sequence[float] | Encoded]) -> None:
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        by_tenant: dict[str, tuple[list[MemoryRecord], list[Encoded]]] = {}
        for record, vector in zip(records, vectors, strict=True):
            point_id = _point_id(record.id)
            if point_id is None:
                raise ValueError(f"memory id {record.id!r} is not a UUID")
            group = by_tenant.setdefault(record.tenant, ([], []))
            group[0].append(record if point_id == record.id else replace(record, id=point_id))
            group[1].append(self._encoded(vector, record.text))
        for tenant, (group_records, group_encoded) in by_tenant.items():
            await self._upsert(tenant, group_records, group_encoded)

    def _encoded(self, vector: Sequence[float] | Encoded, text: str = "") -> Encoded:
        """Checks the dimensions; a plain vector becomes one view (and `text`'s terms)."""
        if isinstance(vector, Encoded):
            for v in [vector.dense, *vector.views, *vector.words]:
                self._vector(v)
            return vector
        return Encoded.of_vector(self._vector(vector), text)

    async def search(
        self,
        tenant: str,
        vector: Sequence[float] | Encoded,
        *,
        limit: int,
        session_id: str = "",
        user: str = "",
        threshold: float = 0.0,
        with_vectors: bool = False,
        text: str = "",
        lexical_floor: float = 0.0,
        word_floor: float = 0.0,
    ) -> list[ScoredRecord]:
        must = [self._match("tenant", tenant)]
        if session_id:
            must.append(self._match("session_id", session_id))
        if user:
            must.append(self._match("user", user))
        ranking = self._ranking(tenant, vector, self._filter(must), limit, threshold, with_vectors, text)
        return await self._best(
            replace(ranking, lexical_floor=lexical_floor, word_floor=word_floor, scoped=bool(session_id or user))
        )

    async def recall(
        self,
        tenant: str,
        vector: Sequence[float] | Encoded,
        *,
        session_id: str,
        before_seq: int,
        user: str,
        limit: int,
        threshold: float,
        with_vectors: bool = False,
        text: str = "",
        lexical_floor: float = 0.0,
        word_floor: float = 0.0,
    ) -> list[ScoredRecord]:
        earlier_in_session = self._filter([self._match("session_id", session_id), self._range("seq", lt=before_seq)])
        either = [self._nest(earlier_in_session)]
        if user:
            other_sessions = self._filter([self._match("user", user)], must_not=[self._match("session_id", session_id)])
            either.append(self._nest(other_sessions))
        where = self._filter([self._match("tenant", tenant)], should=either)
        ranking = self._ranking(tenant, vector, where, limit, threshold, with_vectors, text)
        return await self._best(replace(ranking, lexical_floor=lexical_floor, word_floor=word_floor, scoped=True))

    def _ranking(
        self,
        tenant: str,
        vector: Sequence[float] | Encoded,
        where: F,
        limit: int,
        threshold: float,
        with_vectors: bool,
        text: str,
    ) -> Ranking[F]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = self._encoded(vector)
        if not query.terms and text:
            query = replace(query, terms=lexical.query(text))
        return Ranking(query, where, limit, threshold, 0.0, 0.0, False, with_vectors)

    async def _best(self, ranking: Ranking[F]) -> list[ScoredRecord]:
        query = ranking.query
        if query.terms or (ranking.scoped and query.words):
            return await self._fused(replace(ranking, dense_floor=ranking.dense_floor - _THRESHOLD_SLACK))
        found = await self._query(
            query.dense, ranking.where, ranking.limit, ranking.dense_floor - _THRESHOLD_SLACK, ranking.with_vectors
        )
        return [hit for hit in found if hit.score >= ranking.dense_floor]

    async def get(self, tenant: str, ids: Sequence[str]) -> list[MemoryRecord]:
        wanted = list(dict.fromkeys(p for p in map(_point_id, ids) if p is not None))
        if not wanted:
            return []
        found = {r.id: r for r in await self._retrieve(wanted) if r.tenant == tenant}
        return [found[i] for i in wanted if i in found]

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        found = await self.get(tenant, ids)
        if found:
            await self._delete(self._filter([self._match("tenant", tenant), self._has_ids([r.id for r in found])]))
        return len(found)

    async def delete_session(self, tenant: str, session_id: str) -> int:
        where = self._filter([self._match("tenant", tenant), self._match("session_id", session_id)])
        removed = await self._count(where)
        if removed:
            await self._delete(where)
        return removed

    async def count(self, tenant: str = "") -> int:
        return await self._count(self._filter([self._match("tenant", tenant)]) if tenant else None)

    async def counts(self, field: str, tenant: str = "") -> dict[str, int]:
        if field not in KEYWORD_FIELDS:
            raise ValueError(f"memories are counted by {', '.join(KEYWORD_FIELDS)}, not {field!r}")
        return await self._facet(field, self._filter([self._match("tenant", tenant)]) if tenant else None)

    async def oldest(
        self, tenant: str, *, limit: int, user: str = "", session_id: str = "", before: int = 0
    ) -> list[MemoryRecord]:
        scope = [self._match("tenant", tenant)]
        scope += [self._match("user", user)] if user else []
        scope += [self._match("session_id", session_id)] if session_id else []
        scope += [self._range("created_at", lt=before)] if before else []
        return await self._scroll(self._filter(scope), limit, by_time=True)

    # -- knowledge
    def _collection(self, tenant: str, collection: str, document: str = "") -> list[C]:
        scope = [self._match("tenant", tenant), self._match("collection", collection)]
        return [*scope, self._match("document", document)] if document else scope

    async def replace_document(
        self,
        tenant: str,
        collection: str,
        document: str,
        passages: Sequence[Passage],
        vectors: Sequence[Sequence[float]],
    ) -> int:
        if len(passages) != len(vectors):
            raise ValueError(f"{len(passages)} passages but {len(vectors)} vectors")
        if [(p.tenant, p.collection, p.document, p.chunk) for p in passages] != [
            (tenant, collection, document, chunk) for chunk in range(len(passages))
        ]:
            raise ValueError("passages must be chunks 0..n-1 of the one document named")
        if any(_point_id(p.id) != p.id for p in passages):
            raise ValueError("a passage id is not a canonical UUID")
        if passages:
            await self._write_passages(tenant, passages, [self._vector(v) for v in vectors])
        stale = self._filter(
            [*self._collection(tenant, collection, document), self._range("chunk", gt=len(passages) - 1)]
        )
        removed = await self._count_passages(stale)
        if removed:
            await self._delete_passages(stale)
        return removed

    async def search_passages(
        self, tenant: str, collection: str, vector: Sequence[float], *, limit: int, threshold: float = 0.0
    ) -> list[ScoredPassage]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        where = self._filter(self._collection(tenant, collection))
        found = await self._query_passages(self._vector(vector), where, limit, threshold - _THRESHOLD_SLACK)
        return [hit for hit in found if hit.score >= threshold]

    async def documents(self, tenant: str, collection: str = "") -> list[DocumentInfo]:
        scope = self._collection(tenant, collection) if collection else [self._match("tenant", tenant)]
        return _documents(await self._passage_payloads(self._filter(scope), _LISTING_FIELDS))

    async def delete_passages(self, tenant: str, collection: str, document: str = "") -> int:
        where = self._filter(self._collection(tenant, collection, document))
        removed = await self._count_passages(where)
        if removed:
            await self._delete_passages(where)
        return removed

    async def _same_second(self, scope: Sequence[C], created_at: int) -> list[MemoryRecord]:
        where = self._filter([*scope, self._match("created_at", created_at)])
        return sorted(await self._scroll(where, _SAME_SECOND_MAX, by_time=False), key=_order)

    # Last: a method named `list` hides the builtin from the annotations after it.
    async def list(
        self, tenant: str, *, session_id: str = "", user: str = "", limit: int = 20, after: str = ""
    ) -> tuple[list[MemoryRecord], bool]:
        if not session_id and not user:
            raise ValueError("listing memories needs a session_id or a user")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        scope = [self._match("tenant", tenant)]
        scope += [self._match("session_id", session_id)] if session_id else []
        scope += [self._match("user", user)] if user else []
        page: list[MemoryRecord] = []
        later = scope
        if after:
            cursor = next(iter(await self.get(tenant, [after])), None)
            if cursor is None or session_id not in ("", cursor.session_id) or user not in ("", cursor.user):
                raise InvalidArgumentError(f"no memory {after!r} in this listing to continue after", "after")
            page = [r for r in await self._same_second(scope, cursor.created_at) if _order(r) > _order(cursor)]
            later = [*scope, self._range("created_at", gt=cursor.created_at)]
        wanted = limit + 1 - len(page)
        if wanted > 0:
            batch = await self._scroll(self._filter(later), wanted, by_time=True)
            if len(batch) == wanted:
                # The page may end inside one second; take that second whole, in id order.
                last = batch[-1].created_at
                batch = [r for r in batch if r.created_at != last] + await self._same_second(scope, last)
            page += sorted(batch, key=_order)
        return page[:limit], len(page) > limit


# -- the embedded engine ---------------------------------------------------------------------

_CURRENT = "CURRENT"
# In a shard's folder: the shard holds every representation of encoding.py (written at its creation).
_LAYOUT = "LAYOUT-2"
# The index build runs in a child process on a copy of the shard: qdrant-edge holds the
# interpreter lock for the whole of optimize() (seconds to minutes), which in this process
# would stop every query and the event loop with them.
_BUILD_SCRIPT = """
import os, sys
if hasattr(os, "nice"):
    os.nice(10)
from qdrant_edge import EdgeShard
shard = EdgeShard.load(sys.argv[1])
print(shard.optimize(), flush=True)
shard.close()
"""


async def _to_thread_to_the_end(call: Callable[[A], T], arg: A) -> T:
    """`call(arg)` in a worker thread. Cancelled, it still waits for the call to end: the
    steps of a rebuild must not overlap."""
    future = asyncio.ensure_future(asyncio.to_thread(call, arg))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def _own_folder(path: Path) -> IO[bytes]:
    """An exclusive lock on `path/LOCK`, held while the file stays open: one process per shard."""
    owner = (path / "LOCK").open("ab")
    try:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner.close()
        raise RuntimeError(f"{path} is in use by another vector store") from exc
    return owner


def _generation(name: str) -> int:
    prefix, _, number = name.partition("-")
    return int(number) if prefix == "gen" and number.isdigit() else 0


class EdgeVectorStore(_QdrantStore["EdgeCondition", qe.Filter]):
    """One qdrant-edge shard in a folder: `path/CURRENT` names the live `path/gen-NNNNNN`.

    Points land in a plain segment, searched exactly, which stays fast while it is small.
    After `optimize_after` new points (or a quarter of those already indexed, if more) the
    index is rebuilt in a child process on a copy of the shard; writes made meanwhile are
    replayed onto the copy, which then replaces the live shard. Queries continue throughout
    but for the moment the rebuilt shard is loaded; writes also wait while the shard is
    copied. `optimize()` does the same on demand; `optimize_after=0` leaves it to that.
    One process per folder (`path/LOCK`).

    Knowledge lives in a second shard, `path/knowledge`, which is never rebuilt: its passages
    are scored exactly, a few milliseconds for tens of thousands of them (more want the
    Qdrant server).

    The engine is synchronous and keeps the interpreter lock while it works, so its calls
    run one at a time in worker threads.
    """

    def __init__(
        self,
        path: Path,
        dims: int = DIMS,
        *,
        optimize_after: int = 20_000,
        growth: float = 0.25,
        indexing_threshold_kb: int | None = None,
    ) -> None:
        self.path = path
        self.dims = dims
        self._indexing_threshold_kb = indexing_threshold_kb  # None: the engine's (10 MB of vectors)
        self._optimize_after = optimize_after
        self._growth = growth
        self._lock = threading.Lock()  # every engine call
        self._files = threading.Lock()  # writes, and the copy and replacement of the shard
        self._journal: list[qe.UpdateOperation] | None = None  # writes since the copy
        self._knowledge: qe.EdgeShard | None = None  # opened on first use
        self._build: asyncio.Task[bool] | None = None
        self._retry_at = 0.0
        self._closing = False  # no new builds
        self._closed = False  # no more engine calls
        path.mkdir(parents=True, exist_ok=True)
        self._owner = _own_folder(path)
        try:
            self._live, self._shard = self._open()
        except BaseException:
            self._owner.close()
            raise
        info = self._shard.info()
        self._indexed = info.indexed_vectors_count
        self._written = info.points_count - info.indexed_vectors_count  # since the last build
        for stale in path.glob("gen-*"):
            if stale.name != self._live:
                shutil.rmtree(stale, ignore_errors=True)

    def _config(self, hybrid: bool = True) -> qe.EdgeConfig:
        """The memories' shard is `hybrid` (views, words and terms beside the dense vector); the
        knowledge shard is not. Views and words have no graph: they are scored point by point
        within a user or a session."""
        dense = qe.EdgeVectorParams(size=self.dims, distance=qe.Distance.Cosine)
        hnsw = qe.HnswIndexConfig(
            m=0, payload_m=HNSW_PAYLOAD_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_THRESHOLD_KB
        )
        if not hybrid:
            vectors: qe.EdgeVectorParams | dict[str, qe.EdgeVectorParams] = dense
            sparse = None
        else:
            many = qe.EdgeVectorParams(
                size=self.dims,
                distance=qe.Distance.Cosine,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                datatype=qe.VectorStorageDatatype.Float16,
                hnsw_config=qe.HnswIndexConfig(
                    m=0, payload_m=0, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=EXACT_ALWAYS_KB
                ),
            )
            vectors = {"": dense, VIEWS: many, WORDS: many}
            sparse = {lexical.NAME: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
        return qe.EdgeConfig(
            vectors=vectors,
            sparse_vectors=sparse,
            hnsw_config=hnsw,
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb),
        )

    def _open(self) -> tuple[str, qe.EdgeShard]:
        current = self.path / _CURRENT
        if current.is_file():
            name = current.read_text().strip()
            if not (self.path / name / _LAYOUT).is_file():
                return self._upgrade(name)
            return name, qe.EdgeShard.load(str(self.path / name), self._config())
        name = "gen-000001"
        if any(p.name != name for p in self.path.glob("gen-*")):
            raise RuntimeError(f"{self.path} holds shards but no {_CURRENT} file naming the live one")
        # CURRENT is written once the first shard is ready, before any write: without it, a
        # first shard is one whose creation was cut short.
        shard = self._create(name)
        self._point_current_to(name)
        return name, shard

    def _create(self, name: str) -> qe.EdgeShard:
        """A new, empty memories' shard in `path/name`, with its payload indexes."""
        shutil.rmtree(self.path / name, ignore_errors=True)
        shard = qe.EdgeShard.create(str(self.path / name), self._config())
        for field in KEYWORD_FIELDS:
            tenant = field == "tenant"  # a graph per tenant; none per session or user
            params = qe.KeywordIndexParams(is_tenant=tenant, enable_hnsw=tenant)
            shard.update(qe.UpdateOperation.create_field_index(field, params))
        for field in INTEGER_FIELDS:
            ints = qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=False)
            shard.update(qe.UpdateOperation.create_field_index(field, ints))
        shard.flush()
        (self.path / name / _LAYOUT).touch()
        return shard

    def _upgrade(self, old: str) -> tuple[str, qe.EdgeShard]:
        """A shard an earlier release wrote (the dense vector only): its points are copied into
        a new generation with the representations that need no embedding (the dense vector as
        the one view, the terms of the stored text), which becomes the live one."""
        name = f"gen-{_generation(old) + 1:06d}"
        source = qe.EdgeShard.load(str(self.path / old), self._config(hybrid=False))
        try:
            shard = self._create(name)
            offset: qe.PointId | None = None
            while True:
                request = qe.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, with_payload=True, with_vector=True)
                points, offset = source.scroll(request)
                copies = []
                for p in points:
                    dense = _floats(_dense_of(p.vector)) or []
                    encoded = Encoded.of_vector(dense, str((p.payload or {}).get("text", "")))
                    copies.append(qe.Point(p.id, _edge_vectors(encoded), p.payload))
                if copies:
                    shard.update(qe.UpdateOperation.upsert_points(copies))
                if offset is None:
                    break
            shard.flush()
        finally:
            source.close()
        self._point_current_to(name)
        log.info("memory shard upgraded", extra={"points": shard.info().points_count, "shard": name})
        return name, shard

    def _open_knowledge(self) -> qe.EdgeShard:
        """The knowledge shard, made on first use (most stores never hold any knowledge). The
        file `path/KNOWLEDGE` is written once the shard is complete; a folder without it is
        one whose creation was cut short."""
        folder, ready = self.path / "knowledge", self.path / "KNOWLEDGE"
        if ready.is_file():
            return qe.EdgeShard.load(str(folder), self._config(hybrid=False))
        shutil.rmtree(folder, ignore_errors=True)
        shard = qe.EdgeShard.create(str(folder), self._config(hybrid=False))
        for field in KNOWLEDGE_KEYWORD_FIELDS:
            tenant = field == "tenant"
            params = qe.KeywordIndexParams(is_tenant=tenant, enable_hnsw=tenant)
            shard.update(qe.UpdateOperation.create_field_index(field, params))
        for field in KNOWLEDGE_INTEGER_FIELDS:
            ints = qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=False)
            shard.update(qe.UpdateOperation.create_field_index(field, ints))
        shard.flush()
        ready.touch()
        return shard

    def _point_current_to(self, name: str) -> None:
        tmp = self.path / f"{_CURRENT}.tmp"
        with tmp.open("w") as out:
            out.write(name + "\n")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path / _CURRENT)

    # -- engine calls, in worker threads
    def _engine(self) -> qe.EdgeShard:
        if self._closed:
            raise RuntimeError("the vector store is closed")
        return self._shard

    async def _read(self, call: Callable[[qe.EdgeShard], T]) -> T:
        def run() -> T:
            with self._lock:
                return call(self._engine())

        return await asyncio.to_thread(run)

    async def _write(self, make: Callable[[], qe.UpdateOperation]) -> None:
        def run() -> None:
            operation = make()
            with self._files, self._lock:
                self._engine().update(operation)
                if self._journal is not None:
                    self._journal.append(operation)

        await asyncio.to_thread(run)

    # -- filters
    def _match(self, key: str, value: str | int) -> EdgeCondition:
        return qe.FieldCondition(key, match=qe.MatchValue(value))

    def _range(self, key: str, *, gt: int | None = None, lt: int | None = None) -> EdgeCondition:
        return qe.FieldCondition(key, range=qe.RangeFloat(gt=gt, lt=lt))

    def _has_ids(self, ids: Sequence[str]) -> EdgeCondition:
        point_ids: set[qe.PointId] = set(ids)
        return qe.HasIdCondition(point_ids)

    def _filter(
        self,
        must: Sequence[EdgeCondition],
        should: Sequence[EdgeCondition] = (),
        must_not: Sequence[EdgeCondition] = (),
    ) -> qe.Filter:
        return qe.Filter(must=list(must) or None, should=list(should) or None, must_not=list(must_not) or None)

    def _nest(self, where: qe.Filter) -> EdgeCondition:
        return where

    # -- primitives
    async def _upsert(self, tenant: str, records: Sequence[MemoryRecord], encoded: Sequence[Encoded]) -> None:
        def make() -> qe.UpdateOperation:
            points = [qe.Point(r.id, _edge_vectors(e), _payload(r)) for r, e in zip(records, encoded, strict=True)]
            return qe.UpdateOperation.upsert_points(points, condition=self._filter([self._match("tenant", tenant)]))

        await self._write(make)
        self._written += len(records)
        self._maybe_build()

    async def _query(
        self, vector: list[float], where: qe.Filter, limit: int, threshold: float, with_vectors: bool
    ) -> list[ScoredRecord]:
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector),
            filter=where,
            score_threshold=threshold,
            with_payload=True,
            with_vector=with_vectors,
        )
        points = await self._read(lambda shard: shard.query(request))
        return [
            ScoredRecord(_record(p.id, p.payload), p.score, _floats(_dense_of(p.vector)) if with_vectors else None)
            for p in points
        ]

    async def _fused(self, ranking: Ranking[qe.Filter]) -> list[ScoredRecord]:
        query, where = ranking.query, ranking.where
        stages = [
            qe.Prefetch(
                CANDIDATES,
                qe.Query.Nearest([query.dense], using=VIEWS),
                filter=where,
                score_threshold=ranking.dense_floor,
            )
            if ranking.scoped
            else qe.Prefetch(
                CANDIDATES, qe.Query.Nearest(query.dense), filter=where, score_threshold=ranking.dense_floor
            )
        ]
        weights = [VIEWS_WEIGHT if ranking.scoped else DENSE_WEIGHT]
        lexical_weight = SCOPED_LEXICAL_WEIGHT if ranking.scoped else LEXICAL_WEIGHT
        if query.terms and lexical_weight:
            stages.append(
                qe.Prefetch(
                    CANDIDATES,
                    qe.Query.Nearest(qe.SparseVector(query.terms.indices, query.terms.values), using=lexical.NAME),
                    params=qe.SearchParams(idf=qe.IdfParams(where)),
                    filter=where,
                    score_threshold=ranking.lexical_floor or None,
                )
            )
            weights.append(lexical_weight)
        if ranking.scoped and query.words:
            stages.append(
                qe.Prefetch(
                    CANDIDATES,
                    qe.Query.Nearest(query.words, using=WORDS),
                    filter=where,
                    score_threshold=ranking.words_floor_total,
                )
            )
            weights.append(WORDS_WEIGHT)
        request = qe.QueryRequest(
            limit=ranking.limit,
            prefetches=stages,
            query=qe.Fusion.Rrf(RRF_K, weights),  # type: ignore[arg-type]  # the stub types Rrf apart from Fusion
            with_payload=True,
            with_vector=[""] if ranking.with_vectors else False,
        )
        points = await self._read(lambda shard: shard.query(request))
        return [
            ScoredRecord(
                _record(p.id, p.payload), p.score, _floats(_dense_of(p.vector)) if ranking.with_vectors else None
            )
            for p in points
        ]

    async def _scroll(self, where: qe.Filter, limit: int, by_time: bool) -> list[MemoryRecord]:
        order = qe.OrderBy("created_at", qe.Direction.Asc) if by_time else None
        request = qe.ScrollRequest(limit=limit, filter=where, with_payload=True, with_vector=False, order_by=order)
        points, _ = await self._read(lambda shard: shard.scroll(request))
        return [_record(p.id, p.payload) for p in points]

    async def _retrieve(self, ids: Sequence[str]) -> list[MemoryRecord]:
        point_ids: list[qe.PointId] = list(ids)
        points = await self._read(lambda shard: shard.retrieve(point_ids, True, False))
        return [_record(p.id, p.payload) for p in points]

    async def _delete(self, where: qe.Filter) -> None:
        await self._write(lambda: qe.UpdateOperation.delete_points_by_filter(where))

    async def _count(self, where: qe.Filter | None) -> int:
        return await self._read(lambda shard: shard.count(qe.CountRequest(exact=True, filter=where)))

    async def _facet(self, field: str, where: qe.Filter | None) -> dict[str, int]:
        request = qe.FacetRequest(field, limit=_FACET_LIMIT, exact=True, filter=where)
        found = await self._read(lambda shard: shard.facet(request))
        return {str(hit.value): hit.count for hit in found.hits}

    # -- knowledge primitives, on the knowledge shard
    async def _on_knowledge(self, call: Callable[[qe.EdgeShard], T]) -> T:
        def run() -> T:
            with self._lock:
                self._engine()  # not closed
                if self._knowledge is None:
                    self._knowledge = self._open_knowledge()
                return call(self._knowledge)

        return await asyncio.to_thread(run)

    async def _write_passages(self, tenant: str, passages: Sequence[Passage], vectors: Sequence[list[float]]) -> None:
        points = [qe.Point(p.id, v, _payload(p)) for p, v in zip(passages, vectors, strict=True)]
        upsert = qe.UpdateOperation.upsert_points(points, condition=self._filter([self._match("tenant", tenant)]))
        await self._on_knowledge(lambda shard: shard.update(upsert))

    async def _query_passages(
        self, vector: list[float], where: qe.Filter, limit: int, threshold: float
    ) -> list[ScoredPassage]:
        request = qe.QueryRequest(
            limit=limit, query=qe.Query.Nearest(vector), filter=where, score_threshold=threshold, with_payload=True
        )
        points = await self._on_knowledge(lambda shard: shard.query(request))
        return [ScoredPassage(_passage(p.id, p.payload), p.score) for p in points]

    async def _passage_payloads(self, where: qe.Filter, fields: list[str]) -> list[dict[str, Any]]:
        payloads: list[dict[str, Any]] = []
        offset: qe.PointId | None = None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=_SCROLL_PAGE, filter=where, with_payload=fields, with_vector=False
            )
            points, offset = await self._on_knowledge(functools.partial(qe.EdgeShard.scroll, scroll=request))
            payloads += [dict(p.payload or {}) for p in points]
            if offset is None:
                return payloads

    async def _delete_passages(self, where: qe.Filter) -> None:
        delete = qe.UpdateOperation.delete_points_by_filter(where)
        await self._on_knowledge(lambda shard: shard.update(delete))

    async def _count_passages(self, where: qe.Filter) -> int:
        return await self._on_knowledge(lambda shard: shard.count(qe.CountRequest(exact=True, filter=where)))

    async def healthy(self) -> bool:
        return not self._closing

    # -- the index build
    @property
    def optimizing(self) -> bool:
        return self._build is not None and not self._build.done()

    async def optimize(self) -> bool:
        """Builds the index over every point written so far (waits for a build under way).
        True when the shard was rebuilt, False when there was nothing to index."""
        if self._closing:
            raise RuntimeError("the vector store is closed")
        if self._build is None or self._build.done():
            self._build = asyncio.get_running_loop().create_task(self._rebuild())
        return await asyncio.shield(self._build)

    def _maybe_build(self) -> None:
        due = max(self._optimize_after, int(self._growth * self._indexed))
        if (
            not self._optimize_after
            or self._closing
            or self.optimizing
            or self._written < due
            or time.monotonic() < self._retry_at
        ):
            return
        self._build = asyncio.get_running_loop().create_task(self._background_build())

    async def _background_build(self) -> bool:
        try:
            return await self._rebuild()
        except Exception:
            log.exception("vector index build failed; the shard stays as it was")
            self._retry_at = time.monotonic() + 300
            return False

    async def _rebuild(self) -> bool:
        started = time.monotonic()
        live = self._live
        target = self.path / f"gen-{_generation(live) + 1:06d}"
        written, self._written = self._written, 0
        replaced = False
        try:
            points = await _to_thread_to_the_end(self._copy, target)
            if not await self._build_index(target):
                return False  # nothing worth indexing yet; the live shard has every write
            await _to_thread_to_the_end(self._replace, target)
            replaced = True
        except BaseException:
            self._written += written
            raise
        finally:
            self._journal = None
            await _to_thread_to_the_end(self._discard, live if replaced else target.name)
        self._indexed = points
        seconds = round(time.monotonic() - started, 1)
        log.info("vector index rebuilt", extra={"points": points, "seconds": seconds, "shard": target.name})
        return True

    @staticmethod
    async def _build_index(folder: Path) -> bool:
        """optimize() on the shard in `folder`, in a child process; True if it indexed anything."""
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BUILD_SCRIPT,
            str(folder),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await child.communicate()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        if child.returncode != 0:
            raise RuntimeError(f"index build exited with {child.returncode}: {err.decode(errors='replace')[-2000:]}")
        return out.decode().strip() == "True"

    def _copy(self, target: Path) -> int:
        """Flushes the live shard and copies its folder; writes wait, queries do not."""
        with self._files:
            with self._lock:
                shard = self._engine()
                shard.flush()
                points = shard.count(qe.CountRequest(exact=True))
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.path / self._live, target)
            self._journal = []
        return points

    def _replace(self, target: Path) -> None:
        """Loads the rebuilt copy, replays onto it the writes made since the copy, and makes it
        the live shard."""
        with self._files:
            fresh = qe.EdgeShard.load(str(target), self._config())
            try:
                for operation in self._journal or []:
                    fresh.update(operation)
                fresh.flush()
                with self._lock:
                    self._engine()  # not closed meanwhile
                    self._point_current_to(target.name)
                    old, self._shard, self._live = self._shard, fresh, target.name
            except BaseException:
                fresh.close()
                raise
        old.close()

    def _discard(self, name: str) -> None:
        with self._files:
            if name != self._live:
                shutil.rmtree(self.path / name, ignore_errors=True)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._build is not None and not self._build.done():
            self._build.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._build

        def shut() -> None:
            with self._files, self._lock:
                self._closed = True
                try:
                    for shard in (self._shard, self._knowledge):
                        if shard is not None:
                            shard.flush()
                            shard.close()
                finally:
                    self._owner.close()

        await asyncio.to_thread(shut)


# -- a Qdrant server ---------------------------------------------------------------------------

# Besides 5xx: refused credentials and rate limits also leave the store out of reach.
_UNAVAILABLE_HTTP = {401, 403, 429}
_UNAVAILABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


class ServerVectorStore(_QdrantStore[models.Condition, models.Filter]):
    """One collection on a Qdrant server, created (with its payload indexes) on first use, and
    `<collection>_knowledge` beside it for the knowledge passages. Every call gives up after
    `timeout_s` and then raises VectorStoreUnavailable, as does an unreachable or failing (5xx)
    server."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection: str = DEFAULT_COLLECTION,
        dims: int = DIMS,
        *,
        timeout_s: float = 2.0,
        where: str = "",
    ) -> None:
        self._client = client
        self.collection = collection
        self.dims = dims
        self._timeout_s = timeout_s
        self._where = where or "the Qdrant server"
        self.knowledge_collection = f"{collection}_knowledge"
        self._ready = False
        self._knowledge_ready = False
        self._hybrid = True  # the memories' collection holds every representation (known once ensured)
        self._ensuring = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        dims: int = DIMS,
        timeout_s: float = 2.0,
    ) -> ServerVectorStore:
        client = AsyncQdrantClient(
            url=url, api_key=api_key, timeout=max(1, math.ceil(timeout_s)), check_compatibility=False
        )
        return cls(client, collection, dims, timeout_s=timeout_s, where=url)

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
        except TimeoutError as exc:
            raise VectorStoreUnavailable(f"{self._where} did not answer within {self._timeout_s:g} s") from exc
        except UnexpectedResponse as exc:
            if exc.status_code is not None and (exc.status_code >= 500 or exc.status_code in _UNAVAILABLE_HTTP):
                raise VectorStoreUnavailable(f"{self._where} answered {exc.status_code}") from exc
            raise
        except (ResponseHandlingException, httpx.TransportError, ConnectionError) as exc:
            raise VectorStoreUnavailable(f"{self._where} is unreachable: {exc}") from exc
        except grpc.RpcError as exc:
            if exc.code() in _UNAVAILABLE_GRPC:
                raise VectorStoreUnavailable(f"{self._where} is unreachable: {exc.code().name}") from exc
            raise

    async def ensure(self) -> None:
        """Creates the memories' collection and its payload indexes if missing; checks the dimensions."""
        async with self._ensuring:
            if not self._ready:
                await self._ensure(self.collection, KEYWORD_FIELDS, INTEGER_FIELDS)
                self._ready = True

    async def ensure_knowledge(self) -> None:
        """The same for the knowledge collection."""
        async with self._ensuring:
            if not self._knowledge_ready:
                await self._ensure(self.knowledge_collection, KNOWLEDGE_KEYWORD_FIELDS, KNOWLEDGE_INTEGER_FIELDS)
                self._knowledge_ready = True

    async def _ensure(self, collection: str, keywords: Sequence[str], integers: Sequence[str]) -> None:
        async with self._guard():
            if await self._client.collection_exists(collection):
                hybrid = self._check(collection, await self._client.get_collection(collection))
            else:
                hybrid = await self._create_collection(collection, hybrid=collection == self.collection)
            if collection == self.collection:
                self._hybrid = hybrid
                if not hybrid:
                    log.warning(
                        "memory collection made by an earlier release: search and recall are dense only",
                        extra={"collection": collection},
                    )
            for field in keywords:
                keyword = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=field == "tenant")
                await self._client.create_payload_index(collection, field, keyword, wait=True)
            for field in integers:
                ints = models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=True)
                await self._client.create_payload_index(collection, field, ints, wait=True)

    def _check(self, collection: str, info: models.CollectionInfo) -> bool:
        """Checks the dimensions; whether the collection holds the hybrid representations."""
        params = info.config.params.vectors
        dense = params.get("") if isinstance(params, dict) else params
        size = dense.size if isinstance(dense, models.VectorParams) else None
        if size != self.dims:
            raise ValueError(f"collection {collection} holds {size}-d vectors, not {self.dims}")
        return (
            isinstance(params, dict) and VIEWS in params and lexical.NAME in (info.config.params.sparse_vectors or {})
        )

    async def _create_collection(self, collection: str, hybrid: bool) -> bool:
        """Makes the collection (with every representation of encoding.py when `hybrid`);
        whether it holds them (another replica may have made it first)."""
        dense = models.VectorParams(size=self.dims, distance=models.Distance.COSINE)
        vectors: models.VectorParams | dict[str, models.VectorParams] = dense
        sparse = None
        if hybrid:
            many = models.VectorParams(
                size=self.dims,
                distance=models.Distance.COSINE,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                datatype=models.Datatype.FLOAT16,
                hnsw_config=models.HnswConfigDiff(m=0, payload_m=0, full_scan_threshold=EXACT_ALWAYS_KB),
            )
            vectors = {"": dense, VIEWS: many, WORDS: many}
            sparse = {lexical.NAME: models.SparseVectorParams(modifier=models.Modifier.IDF)}
        try:
            await self._client.create_collection(
                collection,
                vectors_config=vectors,
                sparse_vectors_config=sparse,
                hnsw_config=models.HnswConfigDiff(
                    m=0,
                    payload_m=HNSW_PAYLOAD_M,
                    ef_construct=HNSW_EF_CONSTRUCT,
                    full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
                ),
            )
        except UnexpectedResponse as exc:
            if exc.status_code != 409:  # another replica created it first
                raise
            return self._check(collection, await self._client.get_collection(collection))
        return hybrid

    @contextlib.asynccontextmanager
    async def _call(self, collection: str = "") -> AsyncIterator[None]:
        """A call on the memories' collection (or the knowledge one), which exists from then on."""
        if collection == self.knowledge_collection:
            if not self._knowledge_ready:
                await self.ensure_knowledge()
        elif not self._ready:
            await self.ensure()
        async with self._guard():
            yield

    # -- filters
    def _match(self, key: str, value: str | int) -> models.Condition:
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))

    def _range(self, key: str, *, gt: int | None = None, lt: int | None = None) -> models.Condition:
        return models.FieldCondition(key=key, range=models.Range(gt=gt, lt=lt))

    def _has_ids(self, ids: Sequence[str]) -> models.Condition:
        point_ids: list[models.ExtendedPointId] = list(ids)
        return models.HasIdCondition(has_id=point_ids)

    def _filter(
        self,
        must: Sequence[models.Condition],
        should: Sequence[models.Condition] = (),
        must_not: Sequence[models.Condition] = (),
    ) -> models.Filter:
        return models.Filter(must=list(must) or None, should=list(should) or None, must_not=list(must_not) or None)

    def _nest(self, where: models.Filter) -> models.Condition:
        return where

    # -- primitives
    async def _upsert(self, tenant: str, records: Sequence[MemoryRecord], encoded: Sequence[Encoded]) -> None:
        async with self._call():
            points = [
                models.PointStruct(id=r.id, vector=self._vectors(e), payload=_payload(r))
                for r, e in zip(records, encoded, strict=True)
            ]
            await self._client.upsert(
                self.collection, points, wait=True, update_filter=self._filter([self._match("tenant", tenant)])
            )

    async def _query(
        self, vector: list[float], where: models.Filter, limit: int, threshold: float, with_vectors: bool
    ) -> list[ScoredRecord]:
        points = await self._nearest(self.collection, vector, where, limit, threshold, with_vectors)
        return [
            ScoredRecord(_record(p.id, p.payload), p.score, _floats(_dense_of(p.vector)) if with_vectors else None)
            for p in points
        ]

    def _vectors(self, encoded: Encoded) -> models.VectorStruct:
        if not self._hybrid:
            return encoded.dense
        vectors: dict[str, Any] = {"": encoded.dense, VIEWS: encoded.views}
        if encoded.words:
            vectors[WORDS] = encoded.words
        if encoded.terms:
            vectors[lexical.NAME] = models.SparseVector(indices=encoded.terms.indices, values=encoded.terms.values)
        return vectors

    async def _fused(self, ranking: Ranking[models.Filter]) -> list[ScoredRecord]:
        query, where = ranking.query, ranking.where
        async with self._call():
            if not self._hybrid:  # a collection made by an earlier release
                return await self._query(query.dense, where, ranking.limit, ranking.dense_floor, ranking.with_vectors)
            stages = [
                models.Prefetch(
                    query=[query.dense] if ranking.scoped else query.dense,
                    using=VIEWS if ranking.scoped else None,
                    filter=where,
                    limit=CANDIDATES,
                    score_threshold=ranking.dense_floor,
                )
            ]
            weights = [VIEWS_WEIGHT if ranking.scoped else DENSE_WEIGHT]
            lexical_weight = SCOPED_LEXICAL_WEIGHT if ranking.scoped else LEXICAL_WEIGHT
            if query.terms and lexical_weight:
                stages.append(
                    models.Prefetch(
                        query=models.SparseVector(indices=query.terms.indices, values=query.terms.values),
                        using=lexical.NAME,
                        filter=where,
                        limit=CANDIDATES,
                        score_threshold=ranking.lexical_floor or None,
                        params=models.SearchParams(idf=models.IdfCorpusParams(corpus=where)),
                    )
                )
                weights.append(lexical_weight)
            if ranking.scoped and query.words:
                stages.append(
                    models.Prefetch(
                        query=query.words,
                        using=WORDS,
                        filter=where,
                        limit=CANDIDATES,
                        score_threshold=ranking.words_floor_total,
                    )
                )
                weights.append(WORDS_WEIGHT)
            response = await self._client.query_points(
                self.collection,
                prefetch=stages,
                query=models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=weights)),
                limit=ranking.limit,
                with_payload=True,
                with_vectors=[""] if ranking.with_vectors else False,
            )
        return [
            ScoredRecord(
                _record(p.id, p.payload), p.score, _floats(_dense_of(p.vector)) if ranking.with_vectors else None
            )
            for p in response.points
        ]

    async def _nearest(
        self,
        collection: str,
        vector: list[float],
        where: models.Filter,
        limit: int,
        threshold: float,
        with_vectors: bool,
    ) -> list[models.ScoredPoint]:
        async with self._call(collection):
            response = await self._client.query_points(
                collection,
                query=vector,
                query_filter=where,
                limit=limit,
                score_threshold=threshold,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return response.points

    async def _scroll(self, where: models.Filter, limit: int, by_time: bool) -> list[MemoryRecord]:
        order = models.OrderBy(key="created_at", direction=models.Direction.ASC) if by_time else None
        async with self._call():
            points, _ = await self._client.scroll(
                self.collection, scroll_filter=where, limit=limit, order_by=order, with_payload=True, with_vectors=False
            )
        return [_record(p.id, p.payload) for p in points]

    async def _retrieve(self, ids: Sequence[str]) -> list[MemoryRecord]:
        point_ids: list[models.ExtendedPointId] = list(ids)
        async with self._call():
            points = await self._client.retrieve(self.collection, point_ids, with_payload=True, with_vectors=False)
        return [_record(p.id, p.payload) for p in points]

    async def _delete(self, where: models.Filter) -> None:
        async with self._call():
            await self._client.delete(self.collection, models.FilterSelector(filter=where), wait=True)

    async def _count(self, where: models.Filter | None) -> int:
        async with self._call():
            result = await self._client.count(self.collection, count_filter=where, exact=True)
        return result.count

    async def _facet(self, field: str, where: models.Filter | None) -> dict[str, int]:
        async with self._call():
            found = await self._client.facet(self.collection, field, facet_filter=where, limit=_FACET_LIMIT, exact=True)
        return {str(hit.value): hit.count for hit in found.hits}

    # -- knowledge primitives, on the knowledge collection
    async def _write_passages(self, tenant: str, passages: Sequence[Passage], vectors: Sequence[list[float]]) -> None:
        points = [
            models.PointStruct(id=p.id, vector=v, payload=_payload(p)) for p, v in zip(passages, vectors, strict=True)
        ]
        async with self._call(self.knowledge_collection):
            await self._client.upsert(
                self.knowledge_collection,
                points,
                wait=True,
                update_filter=self._filter([self._match("tenant", tenant)]),
            )

    async def _query_passages(
        self, vector: list[float], where: models.Filter, limit: int, threshold: float
    ) -> list[ScoredPassage]:
        points = await self._nearest(self.knowledge_collection, vector, where, limit, threshold, False)
        return [ScoredPassage(_passage(p.id, p.payload), p.score) for p in points]

    async def _passage_payloads(self, where: models.Filter, fields: list[str]) -> list[dict[str, Any]]:
        payloads: list[dict[str, Any]] = []
        offset: PointId | None = None
        while True:
            async with self._call(self.knowledge_collection):
                points, offset = await self._client.scroll(
                    self.knowledge_collection,
                    scroll_filter=where,
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=fields,
                    with_vectors=False,
                )
            payloads += [dict(p.payload or {}) for p in points]
            if offset is None:
                return payloads

    async def _delete_passages(self, where: models.Filter) -> None:
        async with self._call(self.knowledge_collection):
            await self._client.delete(self.knowledge_collection, models.FilterSelector(filter=where), wait=True)

    async def _count_passages(self, where: models.Filter) -> int:
        async with self._call(self.knowledge_collection):
            result = await self._client.count(self.knowledge_collection, count_filter=where, exact=True)
        return result.count

    async def healthy(self) -> bool:
        try:
            async with self._call():
                await self._client.collection_exists(self.collection)
        except VectorStoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self._client.close()
