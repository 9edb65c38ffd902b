from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class MemorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_MEMORY_", extra="ignore")

    grpc_port: int = 8103
    redis_url: str = "redis://127.0.0.1:6379/0"
    # A session's history is forgotten this long after its last use.
    history_ttl_s: int = 24 * 3600
