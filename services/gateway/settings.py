from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_GATEWAY_", extra="ignore")

    # Internal gRPC ChatService.
    grpc_port: int = 8101
    # OpenAI REST API (also serves /metrics).
    http_port: int = 8100
    memory_target: str = "127.0.0.1:8103"
    router_target: str = "127.0.0.1:8104"
    inference_target: str = "127.0.0.1:8102"
    # Tenant of requests that carry no API key (API keys come with the gateway's own issue).
    default_tenant: str = "default"
    # Seconds to wait for memory and router before failing a request.
    upstream_timeout_s: float = 10.0
    # How long a finished turn's background append keeps retrying (it is idempotent).
    append_retry_s: float = 30.0
    # Seconds a client is told to wait (Retry-After) when a required dependency is down.
    retry_after_s: int = 5
