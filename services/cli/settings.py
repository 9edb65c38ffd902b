"""Where the ``llmmesh`` command finds the API (and, for ``llmmesh keys``, the key store; for
``llmmesh knowledge``, the memory service); flags override these."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MEMORY_TARGET = "127.0.0.1:8103"


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_", extra="ignore")

    # The public API, ending in /v1 (Envoy's port of `make run` by default).
    base_url: str = DEFAULT_BASE_URL
    # Sent as a Bearer token; the OpenAI SDK's variable works too.
    api_key: str | None = Field(default=None, validation_alias=AliasChoices("LLMMESH_API_KEY", "OPENAI_API_KEY"))
    # Model (or agent) to ask.
    model: str = "llmmesh"
    # Seconds to wait for an answer (for a streamed reply: between two pieces of it).
    timeout_s: float = Field(default=300.0, gt=0)
    # The Redis-protocol server the gateways keep the API keys in (`llmmesh keys` talks to it
    # directly; the local stack's is on 6379).
    redis_url: str = DEFAULT_REDIS_URL
    # The memory service's gRPC port (`llmmesh knowledge` talks to it directly; the local
    # stack's is 8103).
    memory_target: str = DEFAULT_MEMORY_TARGET
