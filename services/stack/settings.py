from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    """The local stack's ports and folders. ``port_offset`` shifts every port at once."""

    model_config = SettingsConfigDict(env_prefix="LLMMESH_STACK_", extra="ignore")

    host: str = "127.0.0.1"
    port_offset: int = 0
    public_port: int = 8080
    admin_port: int = 9901
    gateway_http_port: int = 8100
    gateway_grpc_port: int = 8101
    inference_port: int = 8102
    memory_port: int = 8103
    router_port: int = 8104
    redis_port: int = 6379
    # Prometheus endpoints of the gRPC services (the gateway serves /metrics on its HTTP port).
    inference_metrics_port: int = 9102
    memory_metrics_port: int = 9103
    router_metrics_port: int = 9104
    # Use this Redis-protocol server instead of starting the embedded one.
    redis_url: str = ""
    # Rendered configs, the embedded Redis data and logs.
    run_dir: Path = Path.home() / ".cache" / "llmmesh" / "run"
    ready_timeout_s: float = 900.0
    # Largest request body accepted, at Envoy and in the gateway (413 beyond it).
    max_body_bytes: int = 4 * 1024 * 1024

    def port(self, name: str) -> int:
        return int(getattr(self, f"{name}_port")) + self.port_offset

    @property
    def public_url(self) -> str:
        return f"http://{self.host}:{self.port('public')}"
