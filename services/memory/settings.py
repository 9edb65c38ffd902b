from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.memory.retention import RetentionPolicy


class MemorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_MEMORY_", extra="ignore")

    grpc_port: int = 8103
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Seconds to wait for the Redis-protocol server before a call fails (UNAVAILABLE).
    redis_timeout_s: float = Field(default=2.0, gt=0)
    # A session is forgotten this long after its last use (every key carries this TTL).
    history_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Turns kept per session in Redis; older ones live on in long-term memory only.
    max_stored_turns: int = Field(default=200, ge=2)
    # Turns in the short-term window at most. Past it the window moves in steps of half its
    # size (never turn by turn), so the prompt prefix stays the same between steps.
    window_turns: int = Field(default=20, ge=2)

    # Long-term memory. Empty URL: the embedded Qdrant engine in a folder under data_dir.
    qdrant_url: str = ""
    qdrant_api_key: str = ""
    # Seconds to wait for the Qdrant server before a call fails (recall is then skipped).
    qdrant_timeout_s: float = Field(default=2.0, gt=0)
    data_dir: Path = Path.home() / ".cache" / "llmmesh" / "memory"
    # Embedded engine: rebuild the vector index (in a child process) after this many new
    # memories, or a quarter of those already indexed if more; 0: never by itself.
    vector_index_after: int = Field(default=20_000, ge=0)
    # The inference service, which holds the one embedding model of the mesh.
    inference_target: str = "127.0.0.1:8102"
    embed_timeout_s: float = Field(default=5.0, gt=0)
    # The indexer's embeddings run below serving (see inference.proto EmbedRequest.background)
    # and wait while an engine generates (up to 30 s per batch by inference's default).
    index_embed_timeout_s: float = Field(default=120.0, gt=0)
    # Recall: at most this many memories, each at least this similar to the new message,
    # none a near-duplicate (cosine above dedup_similarity) of a better one.
    recall_top_k: int = Field(default=5, ge=0, le=50)
    recall_threshold: float = Field(default=0.35, ge=-1, le=1)
    # ... or whose content words are on average at least this similar to the message's (each
    # of the message's words against the memory's closest one; see services/memory/encoding.py).
    recall_word_floor: float = Field(default=0.5, ge=0, le=1)
    dedup_similarity: float = Field(default=0.95, gt=0, le=1)
    # Retention of long-term memories (services/memory/retention.py), e.g.
    # LLMMESH_MEMORY_RETENTION='{"max_age_days": 90, "max_per_user": 5000}'; off by default.
    # Tenants with a policy of their own: LLMMESH_MEMORY_RETENTION_TENANTS='{"acme": {...}}'.
    retention: RetentionPolicy = RetentionPolicy()
    retention_tenants: dict[str, RetentionPolicy] = {}
    retention_sweep_s: float = Field(default=600.0, gt=0)
    # Indexer: turns embedded per batch; how long a batch that is not full waits for more
    # (the embedding model computes a pass of 32 short texts for half the CPU per text of a
    # pass of 2); how long an entry may sit with a consumer that went away before another takes it over.
    index_batch: int = Field(default=32, ge=1)
    index_gather_s: float = Field(default=1.0, ge=0, le=60)
    index_claim_idle_ms: int = Field(default=30_000, ge=1000)
