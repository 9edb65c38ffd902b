from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

_REPO = Path(__file__).resolve().parents[2]


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_ROUTER_", extra="ignore")

    grpc_port: int = 8104
    # Agents and how one is chosen (YAML, services/router/config.py); re-read on SIGHUP and ReloadConfig.
    config_path: Path = _REPO / "deploy" / "router.yaml"
    # The inference service: the models it serves join the catalog, and it embeds queries.
    inference_target: str = "127.0.0.1:8102"
    catalog_refresh_s: float = Field(default=10.0, gt=0)
    # A query not embedded within this is routed by the keyword rules...
    embed_timeout_s: float = Field(default=1.0, gt=0)
    # ...and so are the requests of the next this many seconds (no timeout paid on each).
    embed_pause_s: float = Field(default=5.0, ge=0)
    # Embedding the agents' examples (at start-up and on reload), and retrying while it fails.
    examples_timeout_s: float = Field(default=10.0, gt=0)
    examples_retry_s: float = Field(default=2.0, gt=0)
