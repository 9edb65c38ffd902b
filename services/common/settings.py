"""Settings base shared by every service: each service subclasses it with its own env prefix."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every gRPC service has: where it listens, how it logs, where its metrics are."""

    model_config = SettingsConfigDict(env_prefix="LLMMESH_", extra="ignore")

    host: str = "127.0.0.1"
    grpc_port: int = 0  # each service sets its own
    # Prometheus metrics over HTTP; 0 turns the endpoint off.
    metrics_port: int = 0
    log_level: str = "INFO"
    log_json: bool = True
    # Seconds in-flight RPCs get to finish on SIGTERM.
    shutdown_grace_s: float = 10.0

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"
