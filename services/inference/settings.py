from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.inference.embedder import Precision
from services.inference.model_store import DEFAULT_MODEL_NAME

_REPO = Path(__file__).resolve().parents[2]


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_INFERENCE_", extra="ignore")

    grpc_port: int = 8102
    # A Hugging Face model folder; empty: the embedded SmolLM2-135M-Instruct.
    model_path: Path | None = None
    # The name it is served under; empty: the folder's name (the embedded model's own by default).
    model_name: str = ""
    # Where the embedded model is converted to on first start.
    cache_dir: Path = Path.home() / ".cache" / "llmmesh"
    # "auto": every visible GPU (one engine each), else the CPU; or "cpu"; or GPU ids "0,1".
    devices: str = "auto"
    # "auto": float32 on the CPU (bfloat16 is wrong and slow without AVX512-BF16), the model's own on GPUs.
    dtype: str = "auto"
    # Context length; 0: the model's own.
    max_model_len: int = 0
    # The CPU engine (see services/inference/sizing.py): its OpenMP threads' cores ("auto":
    # every core this process may use, or vLLM's syntax "0-3,6"), cores kept out of them, and
    # its KV cache (GiB; 0: a quarter of the memory available at start, 1..64).
    cpu_threads_bind: str = "auto"
    cpu_reserved_cores: int = Field(default=0, ge=0)
    cpu_kv_cache_gib: int = Field(default=0, ge=0)
    # CPU engines in this service (no GPU), each on its own share of the cores and of the KV
    # cache: more than one serves several conversations apart on a small box (or tests
    # placement across engines); 1 gives the one engine every core.
    cpu_engines: int = Field(default=1, ge=1)
    # Placement across engines (services/common/placement.py): a conversation stays on the
    # engine that served it last unless that engine has requests waiting, runs at least this
    # share of max_num_seqs, or has this share of its KV cache in use. Affinity is remembered
    # for this many conversations (the most recent).
    placement_running_share: float = Field(default=0.9, gt=0, le=1)
    placement_kv_cache_usage: float = Field(default=0.9, gt=0, le=1)
    placement_affinity_sessions: int = Field(default=100_000, ge=1)
    # How much lower the CPU engine's threads run than the mesh's services on the same cores
    # (nice levels; 0: the same). 0 by default: lowered, the engine's OpenMP threads are
    # preempted by every service wakeup and the whole step waits at their barrier (measured on
    # 2 cores, 0 against 5 in three interleaved pairs: tokens/s +4% at 16 concurrent, +6% at
    # 4, TTFT p50 at 16 concurrent 3-15% lower; the price: a `GET /v1/models` probe's p99
    # while the engine is saturated ~60 -> ~95 ms, its p50 unchanged).
    cpu_engine_nice: int = Field(default=0, ge=0, le=19)
    # A stream's deltas go out at most once per this many ms, several tokens a message when the
    # engine is faster (the first token, and any after a pause as long, at once); 0: every
    # delta as it comes. Each message costs every hop a write; at 100 tokens/s, 20 ms halves them.
    stream_interval_ms: float = Field(default=20.0, ge=0, le=1000)
    # Share of GPU memory an engine takes on a GPU.
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 64
    # Tokens kept free for the completion when a conversation is trimmed to fit and the
    # client set no max_tokens.
    completion_reserve_tokens: int = Field(default=512, ge=1)
    # Recalled long-term memories take at most this many prompt tokens.
    recall_max_tokens: int = Field(default=256, ge=0)
    # The embedding model (all-MiniLM-L6-v2, packaged); off: no Embed RPC (and no recall).
    embeddings: bool = True
    # Its forward pass: bfloat16 where the CPU computes it natively ("auto"), else float32
    # (see embedder.py for what bfloat16 changes).
    embedding_precision: Precision = "auto"
    # Background embeddings (the memory indexer's) wait while a local engine generates, at
    # most this long per batch (see embedder.py); 0: they never wait.
    background_embed_max_defer_s: float = Field(default=30.0, ge=0)
    seed: int = 0
    # vLLM's tool parser for tool_choice "auto" (the model's own format; "hermes" reads the
    # <tool_call> blocks llmmesh renders for templates without tool support).
    tool_parser: str = "hermes"
    # "vllm"; or "instant": a benchmark-only backend that answers at once with no model
    # (see services/inference/instant.py). Never use it to serve users.
    backend: Literal["vllm", "instant"] = "vllm"
    # The instant backend paced as a fast engine (see instant.py): tokens/s per stream (0: not
    # paced), time to first token, and streams generating at once (0: no limit).
    instant_tokens_per_s: float = Field(default=0.0, ge=0)
    instant_ttft_ms: float = Field(default=0.0, ge=0)
    instant_max_streams: int = Field(default=0, ge=0)
    # External backends (OpenAI-compatible servers, OpenAI, Anthropic) whose models this service
    # also answers for, as `<backend>/<model>` (see deploy/backends.yaml); unset: none.
    backends_file: Path | None = _REPO / "deploy" / "backends.yaml"
    # A backend that failed this many times in a row is skipped for backend_cooldown_s seconds,
    # then tried again (services/inference/backends/cooldown.py).
    backend_failures_to_cool: int = Field(default=3, ge=1)
    backend_cooldown_s: float = Field(default=30.0, ge=0)

    @field_validator("backends_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.model_path.name.lower() if self.model_path else DEFAULT_MODEL_NAME
