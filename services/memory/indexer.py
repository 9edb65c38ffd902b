"""The long-term indexer: reads stored turns from the Redis stream (a consumer group, so
several memory replicas share the work and an entry left by a crashed one is taken over),
embeds them, upserts them into the vector store, and only then removes the entry.

A crash anywhere before the removal leaves the entry queued; point ids derive from the turn,
so indexing it again overwrites instead of duplicating. A turn whose session was deleted, or
a memory that was deleted, while it waited here is not written back.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import redis.asyncio as redis
from prometheus_client import Counter, Gauge

from services.memory.core import records_of
from services.memory.embedding import Embeddings, EmbeddingUnavailableError
from services.memory.encoding import Encoder, WordCache
from services.memory.store import IndexEntry, SessionStore
from services.memory.vectors import MemoryRecord, VectorStore, VectorStoreUnavailable

log = logging.getLogger(__name__)

INDEXED = Counter("llmmesh_memory_indexed_total", "Memories written to the vector store.")
INDEX_FAILURES = Counter("llmmesh_memory_index_failures_total", "Indexing attempts that failed, by cause.", ["cause"])
QUEUED = Gauge("llmmesh_memory_index_queue_length", "Turns waiting in the indexing queue.")


class Indexer:
    def __init__(
        self,
        store: SessionStore,
        vectors: VectorStore,
        embeddings: Embeddings,
        *,
        batch: int,
        claim_idle_ms: int,
        gather_s: float = 0.0,
        consumer: str = "",
        words: WordCache | None = None,
    ) -> None:
        self._store = store
        self._vectors = vectors
        self._encoder = Encoder(embeddings, words)
        self._batch = batch
        self._gather_s = gather_s
        self._claim_idle_ms = claim_idle_ms
        self.consumer = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        """Forever: index what is queued; back off while a dependency is down."""
        backoff = 0.5
        while True:
            try:
                await self._store.ensure_queue()
                while True:
                    await self.step(block_ms=1000)
                    backoff = 0.5
                    # The client may also swallow the cancellation and retry the read.
                    _stop_if_cancelled()
            except asyncio.CancelledError:
                raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                INDEX_FAILURES.labels("redis").inc()
                log.warning("indexer: Redis unreachable", extra={"error": str(exc)})
            except EmbeddingUnavailableError as exc:
                INDEX_FAILURES.labels("embedding").inc()
                log.warning("indexer: embedding model unreachable", extra={"error": str(exc)})
            except VectorStoreUnavailable as exc:
                INDEX_FAILURES.labels("vector_store").inc()
                log.warning("indexer: vector store unreachable", extra={"error": str(exc)})
            except Exception:
                INDEX_FAILURES.labels("bug").inc()
                log.exception("indexer: unexpected error")
            _stop_if_cancelled()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def step(self, block_ms: int = 0) -> int:
        """Indexes one batch; returns how many turns it took off the queue. A batch that is not
        full waits `gather_s` for the turns that finish meanwhile: the embedding model computes
        a pass of many texts at a fraction of the cost per text of a pass of two."""
        entries = await self._store.claim(self.consumer, self._batch, block_ms, self._claim_idle_ms)
        if entries and len(entries) < self._batch and self._gather_s > 0:
            await asyncio.sleep(self._gather_s)
            entries += await self._store.claim(self.consumer, self._batch - len(entries), 0, self._claim_idle_ms)
        QUEUED.set(await self._store.queued())
        if not entries:
            return 0
        await self.index(entries)
        return len(entries)

    async def index(self, entries: list[IndexEntry]) -> None:
        live = [e for e in entries if e.live]
        records = [r for e in live for r in _records(e)]
        gone = await self._forgotten(records)
        records = [r for r in records if r.id not in gone]
        if records:
            encoded = await self._encoder.documents([r.text for r in records])
            await self._vectors.upsert(records, encoded)
            INDEXED.inc(len(records))
            await self._undo_raced_deletions(live, records)
        await self._store.done([e.entry_id for e in entries])

    async def _undo_raced_deletions(self, entries: list[IndexEntry], records: list[MemoryRecord]) -> None:
        """A session or memory deleted while this batch was being embedded: remove again what
        was just written for it."""
        for entry in await self._store.deleted_since_started(entries):
            await self._vectors.delete_session(entry.tenant, entry.session_id)
        gone = await self._forgotten(records)
        for record in records:
            if record.id in gone:
                await self._vectors.delete(record.tenant, [record.id])

    async def _forgotten(self, records: list[MemoryRecord]) -> set[str]:
        by_tenant: dict[str, list[str]] = {}
        for record in records:
            by_tenant.setdefault(record.tenant, []).append(record.id)
        gone: set[str] = set()
        for tenant, ids in by_tenant.items():
            gone |= await self._store.forgotten(tenant, ids)
        return gone


def _stop_if_cancelled() -> None:
    """A client library may turn the cancellation of a blocked read into a connection error;
    the task was still asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _records(entry: IndexEntry) -> list[MemoryRecord]:
    return records_of(
        entry.tenant,
        entry.session_id,
        entry.user,
        entry.turn_id,
        entry.seq,
        entry.created_ms // 1000,
        entry.messages,
    )
