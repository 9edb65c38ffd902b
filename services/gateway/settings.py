from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_GATEWAY_", extra="ignore", populate_by_name=True)

    # Internal gRPC ChatService.
    grpc_port: int = 8101
    # OpenAI REST API (also serves /metrics).
    http_port: int = 8100
    memory_target: str = "127.0.0.1:8103"
    router_target: str = "127.0.0.1:8104"
    inference_target: str = "127.0.0.1:8102"
    # Inference replicas a chat turn may run on, comma-separated `host:port` (the first also
    # answers embeddings and token counts); empty: inference_target alone. Placement
    # (services/gateway/placement.py): a session stays on the replica that ran its previous turn
    # unless that one has requests waiting, runs at least placement_running_share of its batch
    # or has placement_kv_cache_usage of its KV cache in use; else the least loaded. Loads are
    # polled every placement_poll_s; affinity is kept for placement_affinity_sessions sessions.
    inference_targets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    placement_poll_s: float = Field(default=0.5, gt=0, le=1.0)
    placement_running_share: float = Field(default=0.9, gt=0, le=1)
    placement_kv_cache_usage: float = Field(default=0.9, gt=0, le=1)
    placement_affinity_sessions: int = Field(default=100_000, ge=1)
    # The Redis-protocol server holding the API keys, the limits' counters and the usage
    # (shared by every gateway replica).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every /v1 request needs a Bearer API key, which names its tenant. Off: a request without
    # a key is the default tenant's (a key that is given is still checked).
    require_api_key: bool = True
    # Keys to store at start-up: comma-separated `key` or `key:tenant` (tenant: default_tenant).
    api_keys: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("LLMMESH_API_KEYS", "LLMMESH_GATEWAY_API_KEYS")
    )
    # Tenant of seeded keys that name none, and of keyless requests when keys are not required.
    default_tenant: str = "default"
    # Largest request body accepted (413 beyond it); Envoy enforces the same limit in front.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # The embedding model /v1/embeddings serves (the inference service's Embed RPC).
    embedding_model: str = "all-minilm-l6-v2"
    # Seconds to wait for memory and router before failing a request.
    upstream_timeout_s: float = 10.0
    # How long a finished turn's background append keeps retrying (it is idempotent).
    append_retry_s: float = 30.0
    # Seconds a client is told to wait (Retry-After) when a required dependency is down.
    retry_after_s: int = 5
    # Limits of keys that set none of their own (`llmmesh keys create --rpm ...`); 0: unlimited.
    default_rpm: int = Field(default=0, ge=0)
    default_tpm: int = Field(default=0, ge=0)
    default_max_streams: int = Field(default=0, ge=0)
    # Tokens per minute count prompt + completion, reserved before generating. Without
    # max_tokens a request reserves this many completion tokens (at most what its limit leaves),
    # and more in steps of tpm_extend_step while it streams.
    tpm_default_reserve: int = Field(default=512, ge=1)
    tpm_extend_step: int = Field(default=256, ge=1)
    # A request's hold on a concurrency slot lapses this long after its gateway stops renewing
    # it (a replica that died); a live request renews it, and frees it the moment it ends.
    stream_lease_s: float = Field(default=60.0, gt=1)
    # Days the per-day usage counters (GET /v1/usage) are kept.
    usage_retention_days: int = Field(default=400, ge=1)
    # Browser origins allowed to call the API (CORS), comma-separated, e.g.
    # `https://app.example.com`; `*` for any. Empty: no CORS headers at all (the default).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("inference_targets", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [target.strip() for target in value.split(",") if target.strip()]
        return value

    @property
    def inference_replicas(self) -> list[str]:
        return list(dict.fromkeys(self.inference_targets)) or [self.inference_target]
