from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

_REPO = Path(__file__).resolve().parents[2]


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_ROUTER_", extra="ignore")

    grpc_port: int = 8104
    # Models, aliases and agents (YAML).
    config_path: Path = _REPO / "deploy" / "router.yaml"
    # The inference service whose models join the catalog.
    inference_target: str = "127.0.0.1:8102"
    catalog_refresh_s: float = 10.0
