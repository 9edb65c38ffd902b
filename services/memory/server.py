"""Memory service bootstrap: Redis (sessions, history, the indexing queue), the vector store
(embedded Qdrant or a Qdrant server: memories and knowledge), the inference service for
embeddings, the indexer."""

from __future__ import annotations

import asyncio
import contextlib

from llmmesh.inference.v1 import inference_pb2_grpc
from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.channels import insecure_channel
from services.common.server import ServiceSpec, serve
from services.memory.core import MemoryCore, RecallPolicy, dependency_unavailable
from services.memory.embedding import RemoteEmbeddings
from services.memory.encoding import WordCache
from services.memory.indexer import Indexer
from services.memory.knowledge import Knowledge
from services.memory.retention import Retention
from services.memory.servicer import MemoryServicer
from services.memory.settings import MemorySettings
from services.memory.store import SessionStore
from services.memory.vectors import VectorStore, open_vector_store

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


async def main() -> None:
    settings = MemorySettings()
    store = SessionStore.from_url(
        settings.redis_url, settings.history_ttl_s, settings.max_stored_turns, settings.redis_timeout_s
    )
    channel = insecure_channel(settings.inference_target)
    embeddings = RemoteEmbeddings(inference_pb2_grpc.InferenceServiceStub(channel), settings.embed_timeout_s)
    vectors: VectorStore = open_vector_store(
        settings.qdrant_url,
        settings.data_dir / "qdrant",
        api_key=settings.qdrant_api_key or None,
        timeout_s=settings.qdrant_timeout_s,
        optimize_after=settings.vector_index_after,
    )
    words = WordCache()  # the words the indexer embeds, known to the queries
    core = MemoryCore(
        store,
        vectors,
        embeddings,
        words=words,
        window_turns=settings.window_turns,
        recall=RecallPolicy(
            settings.recall_top_k,
            settings.recall_threshold,
            settings.dedup_similarity,
            settings.recall_word_floor,
        ),
    )
    retention = Retention(core, settings.retention, settings.retention_tenants, settings.retention_sweep_s)
    # The indexer's turns are embedded below serving: under load they wait, queued, for the
    # cores serving leaves.
    background = RemoteEmbeddings(
        inference_pb2_grpc.InferenceServiceStub(channel), settings.index_embed_timeout_s, background=True
    )
    indexer = Indexer(
        store,
        vectors,
        background,
        batch=settings.index_batch,
        claim_idle_ms=settings.index_claim_idle_ms,
        gather_s=settings.index_gather_s,
        words=words,
    )
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        await store.ping()  # fail fast when Redis is not there
        tasks.append(asyncio.create_task(indexer.run()))
        if retention.active:
            tasks.append(asyncio.create_task(retention.run()))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await vectors.close()
        await store.close()
        await channel.close()

    spec = ServiceSpec(
        name="memory",
        grpc_services=[SERVICE_NAME],
        register=lambda server: memory_pb2_grpc.add_MemoryServiceServicer_to_server(
            MemoryServicer(core, Knowledge(vectors, embeddings)), server
        ),
        translate_error=dependency_unavailable,
    )
    await serve(spec, settings, startup=startup, shutdown=shutdown)
