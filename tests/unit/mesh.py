"""The mesh in one process, for the fast test tier: real gRPC servers on loopback ports
(memory, router, inference), the gateway's ASGI app behind an httpx client, a real
Redis-protocol server and the embedded Qdrant engine. Only the generation is not the real
model: the instant backend, counting and trimming prompts with SmolLM2's real tokenizer and
chat template. The embedding model is the real one, loaded once for the whole test session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as redis
import uvicorn
from pydantic import SecretStr

from llmmesh.inference.v1 import inference_pb2_grpc
from llmmesh.memory.v1 import memory_pb2_grpc
from llmmesh.router.v1 import router_pb2_grpc
from services.common.channels import insecure_channel
from services.common.keys import KeyStore, connect
from services.common.server import ServiceSpec, running_server
from services.common.settings import ServiceSettings
from services.gateway.auth import Authenticator
from services.gateway.clients import MeshClients
from services.gateway.http_api import create_app
from services.gateway.limits import Limiter
from services.gateway.pipeline import ChatPipeline
from services.gateway.server import HttpServer
from services.gateway.settings import GatewaySettings
from services.gateway.usage import UsageStore
from services.inference.backends.config import BackendConfig
from services.inference.backends.cooldown import Cooldowns
from services.inference.backends.registry import BackendRegistry, external_backend
from services.inference.domain import Backend, Delta, Event, GenerationJob, PromptLimits
from services.inference.embedder import Embedder
from services.inference.instant import InstantBackend
from services.inference.servicer import InferenceServicer
from services.inference.tokenizer import ChatTokenizer
from services.memory.core import MemoryCore, RecallPolicy, dependency_unavailable
from services.memory.embedding import RemoteEmbeddings
from services.memory.indexer import Indexer
from services.memory.servicer import MemoryServicer
from services.memory.store import SessionStore
from services.memory.vectors import VectorStore, open_vector_store
from services.router.server import build as build_router
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from tests.unit.helpers import free_port

MODEL = "smollm2-135m-instruct"


@dataclass
class MeshOptions:
    context_length: int = 8192
    completion_reserve: int = 512
    recall_max_tokens: int = 256
    window_turns: int = 20
    max_stored_turns: int = 200
    recall_top_k: int = 5
    recall_threshold: float = 0.35
    # Run the indexer in the background (tests that drive it by hand turn it off).
    indexer: bool = True
    # A Qdrant server instead of the embedded engine.
    qdrant_url: str = ""
    # Where the API keys live when not with the memory (default: the same Redis).
    keys_redis_url: str = ""
    # A router config other than deploy/router.yaml.
    router_config: Path | None = None
    # External backends next to the local (instant) one, as deploy/backends.yaml lists them.
    backends: list[BackendConfig] = field(default_factory=list)
    # Gateway settings to change (GatewaySettings field -> value).
    gateway: dict[str, Any] = field(default_factory=dict)


class HeldBackend(InstantBackend):
    """The instant backend, whose streams a test can hold open: while `gate` is clear, every
    stream waits after each token it sends (so after its first one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()
        self.last_job: GenerationJob | None = None  # what the pipeline asked for last

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        self.last_job = job
        async for event in super().generate(job):
            yield event
            if isinstance(event, Delta):
                await self.gate.wait()


API_KEY = "llm-test-key-of-the-default-tenant"
OTHER_KEY = "llm-test-key-of-tenant-b"


@dataclass
class Mesh:
    # Sends API_KEY (tenant "default") unless a request says otherwise.
    http: httpx.AsyncClient
    backend: HeldBackend
    store: SessionStore
    vectors: VectorStore
    indexer: Indexer
    pipeline: ChatPipeline
    core: MemoryCore
    # The gateway's usage records (written behind the answers).
    usage: UsageStore
    indexer_running: bool = True

    async def chat(self, content: str, **body: Any) -> httpx.Response:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **body}
        return await self.http.post("/v1/chat/completions", json=payload)

    async def stored(self) -> None:
        """Waits until every finished turn is stored (not yet indexed)."""
        await self.pipeline.drain()

    async def settle(self) -> None:
        """Waits until every finished turn is stored and indexed."""
        for _ in range(400):
            if not self.pipeline.pending_appends and not await self.store.queued():
                return
            if not self.indexer_running:
                await self.indexer.step()
            await asyncio.sleep(0.02)
        raise TimeoutError("turns were not stored and indexed in time")


def _settings(port: int) -> ServiceSettings:
    return ServiceSettings(host="127.0.0.1", grpc_port=port, shutdown_grace_s=0.5)


@contextlib.asynccontextmanager
async def in_process_mesh(
    redis_url: str, data_dir: Path, tokenizer: ChatTokenizer, embedder: Embedder, options: MeshOptions
) -> AsyncIterator[Mesh]:
    ports = {name: free_port() for name in ("inference", "memory", "router")}
    targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    backend = HeldBackend(
        MODEL, tokenizer, options.context_length, PromptLimits(options.completion_reserve, options.recall_max_tokens)
    )
    served: Backend = backend
    if options.backends:
        externals = [external_backend(config, PromptLimits()) for config in options.backends]
        served = BackendRegistry(backend, "instant", externals, Cooldowns(3, 30.0))
    inference = InferenceServicer(served, embedder)
    store = SessionStore.from_url(redis_url, 600, options.max_stored_turns)
    vectors = open_vector_store(options.qdrant_url, data_dir / "qdrant")
    embed_channel = insecure_channel(targets["inference"])
    embeddings = RemoteEmbeddings(inference_pb2_grpc.InferenceServiceStub(embed_channel), 10.0)
    core = MemoryCore(
        store,
        vectors,
        embeddings,
        window_turns=options.window_turns,
        recall=RecallPolicy(options.recall_top_k, options.recall_threshold),
    )
    background = RemoteEmbeddings(inference_pb2_grpc.InferenceServiceStub(embed_channel), 30.0, background=True)
    indexer = Indexer(store, vectors, background, batch=32, claim_idle_ms=300)
    router_channel = insecure_channel(targets["inference"])
    router_settings = RouterSettings()
    if options.router_config is not None:
        router_settings.config_path = options.router_config
    routing, catalog = build_router(router_settings, inference_pb2_grpc.InferenceServiceStub(router_channel))
    specs = [
        (
            ServiceSpec(
                "inference",
                ["llmmesh.inference.v1.InferenceService"],
                lambda s: inference_pb2_grpc.add_InferenceServiceServicer_to_server(inference, s),
            ),
            ports["inference"],
        ),
        (
            ServiceSpec(
                "memory",
                ["llmmesh.memory.v1.MemoryService"],
                lambda s: memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(core), s),
                translate_error=dependency_unavailable,
            ),
            ports["memory"],
        ),
        (
            ServiceSpec(
                "router",
                ["llmmesh.router.v1.RouterService"],
                lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(routing), s),
            ),
            ports["router"],
        ),
    ]
    settings = GatewaySettings(
        memory_target=targets["memory"],
        router_target=targets["router"],
        inference_target=targets["inference"],
        redis_url=options.keys_redis_url or redis_url,
        api_keys=SecretStr(f"{API_KEY},{OTHER_KEY}:tenant-b"),
        **options.gateway,
    )
    async with contextlib.AsyncExitStack() as stack:
        for spec, port in specs:
            await stack.enter_async_context(running_server(spec, _settings(port)))
        await catalog.refresh()
        await routing.embed_examples()
        clients = MeshClients.connect(settings)
        pipeline = ChatPipeline(settings, clients)
        shared = connect(settings.redis_url)
        stack.push_async_callback(shared.aclose)
        keys = KeyStore(shared)
        auth = Authenticator(settings, keys)
        limiter = Limiter(settings, shared)
        stack.push_async_callback(limiter.usage.written, 2.0)  # as the gateway does at shutdown
        await auth.seed()
        stack.push_async_callback(pipeline.close)
        stack.push_async_callback(embed_channel.close)
        stack.push_async_callback(router_channel.close)
        stack.push_async_callback(store.close)
        stack.push_async_callback(vectors.close)
        http_port = free_port()
        # The gateway's REST API on real uvicorn, as the service runs it: each request in its own task.
        server = HttpServer(
            uvicorn.Config(
                create_app(settings, pipeline, clients, auth, limiter),
                host="127.0.0.1",
                port=http_port,
                loop="none",
                http="httptools",
                access_log=False,
                log_config=None,
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)

        async def stop_http() -> None:
            server.should_exit = True
            await serving

        stack.push_async_callback(stop_http)
        http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}",
            timeout=30.0,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        stack.push_async_callback(http.aclose)
        with contextlib.suppress(redis.ConnectionError):  # the Redis-down test has none
            await store.ensure_queue()
        mesh = Mesh(
            http, backend, store, vectors, indexer, pipeline, core, limiter.usage, indexer_running=options.indexer
        )
        task = asyncio.create_task(indexer.run()) if options.indexer else None
        try:
            yield mesh
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
