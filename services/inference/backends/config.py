"""deploy/backends.yaml: the external backends, validated once at start-up.

A file that does not parse or validate stops the service with a message naming the file and
the field at fault; a key that is named but missing (an unset variable, an unreadable file)
stops it too, naming the variable or the file, never a value. Keys are held as ``SecretStr``:
they print as ``**********`` in reprs, logs and errors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

Kind = Literal["openai-compatible", "openai", "anthropic"]
# The default base URL of each kind ("openai-compatible" has none: it must be given).
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
# The name of the local engines' backend in model listings and metrics.
LOCAL = "local"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class BackendConfigError(Exception):
    """deploy/backends.yaml cannot be used as it stands; the message says why."""


class BackendConfig(BaseModel):
    """One external backend. Its models are served as ``<name>/<upstream model>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Kind
    # Off: listed in the file for reference, not started.
    enabled: bool = True
    # Empty: the kind's default (api.openai.com, api.anthropic.com).
    base_url: str = ""
    # Where the key comes from: an environment variable's name, or a file (a mounted secret).
    # Neither: no key (a local Ollama or vLLM server needs none).
    api_key_env: str = ""
    api_key_file: Path | None = None
    # Upstream model names, as the backend knows them.
    models: list[str] = Field(min_length=1)
    # Connecting, and waiting for the first token (a backend silent that long is skipped for the
    # next candidate); then at most this long between two chunks of an answer.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    # The context length of its models, for trimming server-held history with an approximate
    # count (see registry.py); 0: unknown, history is sent whole and the backend judges.
    context_length: int = Field(default=0, ge=0)
    # The completion limit sent when the client sets none (Anthropic requires one).
    default_max_tokens: int = Field(default=1024, ge=1)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if name == LOCAL or not _NAME.match(name):
            raise ValueError(f"must be lowercase letters, digits, '-' or '_' (at most 63), and not {LOCAL!r}: {name!r}")
        return name

    @field_validator("base_url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        if not url:
            return url
        if not re.match(r"^https?://[^\s/@?#]+(/[^\s@?#]*)?$", url):
            # Credentials in the URL would show wherever the URL does (client logs, say).
            raise ValueError("must be an http:// or https:// URL without credentials, query or fragment")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _complete(self) -> BackendConfig:
        if self.kind == "openai-compatible" and not self.base_url:
            raise ValueError("an openai-compatible backend needs a base_url")
        if self.api_key_env and self.api_key_file is not None:
            raise ValueError("give api_key_env or api_key_file, not both")
        if self.kind != "openai-compatible" and not (self.api_key_env or self.api_key_file):
            raise ValueError(f"an {self.kind} backend needs a key: api_key_env or api_key_file")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models are listed twice")
        return self

    @property
    def url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS.get(self.kind, "")

    def model_ids(self) -> list[str]:
        return [f"{self.name}/{model}" for model in self.models]

    def api_key(self, environ: Mapping[str, str] | None = None) -> SecretStr | None:
        """The key, read now; a key that is named but absent is a start-up error."""
        environ = os.environ if environ is None else environ
        if self.api_key_env:
            value = environ.get(self.api_key_env, "").strip()
            if not value:
                raise BackendConfigError(
                    f"backend {self.name!r}: the environment variable {self.api_key_env} holding its key is not set"
                )
            return SecretStr(value)
        if self.api_key_file is not None:
            try:
                value = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise BackendConfigError(
                    f"backend {self.name!r}: its key file {self.api_key_file} cannot be read ({exc.strerror})"
                ) from None
            if not value:
                raise BackendConfigError(f"backend {self.name!r}: its key file {self.api_key_file} is empty")
            return SecretStr(value)
        return None


class BackendsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: list[BackendConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> BackendsFile:
        names = [b.name for b in self.backends]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"backend names must be unique: {', '.join(twice)}")
        return self

    @property
    def enabled(self) -> list[BackendConfig]:
        return [b for b in self.backends if b.enabled]


def parse_backends(text: str, origin: str = "backends file") -> BackendsFile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BackendConfigError(f"{origin} is not valid YAML: {exc}") from None
    try:
        return BackendsFile.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise BackendConfigError(f"{origin} is invalid: {problems}") from None


def load_backends(path: Path | None) -> BackendsFile:
    """The file at `path`; no path: no external backends."""
    if path is None:
        return BackendsFile()
    try:
        text = path.read_text()
    except OSError as exc:
        raise BackendConfigError(f"the backends file {path} cannot be read ({exc.strerror})") from None
    return parse_backends(text, str(path))
