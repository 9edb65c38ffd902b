"""vLLM engines behind one interface: one ``AsyncLLM`` per GPU (on the CPU build, one, or
``cpu_engines`` each on its share of the cores), each request placed by session affinity and
load (services/common/placement.py).

Everything here speaks the domain types of domain.py (``GenerationJob`` in,
``Delta``/``ChoiceEnd``/``End`` out); the servicer maps them to and from protos. Nothing but the
service's start-up imports this module (pyproject.toml's import contracts).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter

from services.common import placement
from services.inference import sizing
from services.inference.context import FittedPrompt
from services.inference.domain import (
    ChoiceEnd,
    Delta,
    End,
    Event,
    GenerationJob,
    LoadFigures,
    PromptLimits,
    Sampling,
    Started,
    TokenLogprob,
    context_length_error,
    fit_job,
    unknown_model_error,
)
from services.inference.settings import InferenceSettings
from services.inference.tokenizer import ChatTokenizer
from services.inference.tools import ToolCalling, parse_tool_calls, plan_tools

log = logging.getLogger(__name__)

PLACEMENTS = Counter(
    "llmmesh_inference_placements_total",
    "Requests placed on an engine, by reason: affinity (the engine that served the session last), least_loaded, "
    "only (one engine).",
    ["reason"],
)
for _reason in placement.REASONS:
    PLACEMENTS.labels(_reason)


class _LoadProbe:
    """A vLLM stat logger that keeps the latest scheduler figures of one engine."""

    def __init__(self, figures: LoadFigures) -> None:
        self.figures = figures

    def factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        figures = self.figures

        class Probe(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
            ) -> None:
                if scheduler_stats is not None:
                    figures.running = scheduler_stats.num_running_reqs
                    figures.waiting = scheduler_stats.num_waiting_reqs
                    figures.kv_cache_usage = scheduler_stats.kv_cache_usage
                    cache = scheduler_stats.prefix_cache_stats
                    if cache is not None:  # this step's lookups
                        figures.prefix_cache_queries += cache.queries
                        figures.prefix_cache_hits += cache.hits
                    figures.reported_at = time.monotonic()

            def log_engine_initialized(self) -> None:
                pass

        return Probe


@contextlib.contextmanager
def _visible_devices(device: str) -> Iterator[None]:
    """Pins the engine process spawned inside the block to one GPU."""
    if not device.startswith("cuda:"):
        yield
        return
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _engine_dtype(setting: str, on_cpu: bool) -> Literal["auto", "half", "float16", "bfloat16", "float", "float32"]:
    if setting == "auto":
        # bfloat16 on a CPU without AVX512-BF16 gives wrong greedy output and is slower.
        return "float32" if on_cpu else "auto"
    if setting not in ("half", "float16", "bfloat16", "float", "float32"):
        raise ValueError(f"unsupported dtype {setting!r}")
    return setting  # type: ignore[return-value]  # checked just above


class VllmEngine:
    """One vLLM AsyncLLM on one device."""

    def __init__(self, name: str, device: str, model_path: Path, settings: InferenceSettings) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.name = name
        self.device = device
        self.load = LoadFigures(
            engine=name, model=settings.served_model_name, device=device, max_num_seqs=settings.max_num_seqs
        )
        on_cpu = device == "cpu"
        args = AsyncEngineArgs(
            model=str(model_path),
            served_model_name=[settings.served_model_name],
            dtype=_engine_dtype(settings.dtype, on_cpu),
            enforce_eager=on_cpu,
            max_model_len=settings.max_model_len or None,  # type: ignore[arg-type]  # None: the model's own
            max_num_seqs=settings.max_num_seqs,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
            enable_prefix_caching=True,  # what session affinity builds on
            disable_log_stats=True,  # our probe still gets the figures
            enable_log_requests=False,
        )
        with _visible_devices(device):
            self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[_LoadProbe(self.load).factory()])
        self.context_length = int(self._llm.model_config.max_model_len)
        self._ids = itertools.count()

    def shutdown(self) -> None:
        self._llm.shutdown()
        # Drop the engine now, while the interpreter is whole: vLLM's __del__ shuts down
        # again and fails noisily when it runs at interpreter exit instead.
        del self._llm

    def unfinished(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    def _sampling_params(self, sampling: Sampling, max_tokens: int) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = None
        if sampling.json_schema is not None:
            structured = StructuredOutputsParams(
                json=sampling.json_schema, disable_any_whitespace=sampling.compact_json
            )
        elif sampling.json_object:
            structured = StructuredOutputsParams(json_object=True)
        return SamplingParams(
            n=sampling.n,
            top_k=sampling.top_k if sampling.top_k is not None else 0,
            min_p=sampling.min_p or 0.0,
            repetition_penalty=1.0 if sampling.repetition_penalty is None else sampling.repetition_penalty,
            logit_bias=sampling.logit_bias or None,
            logprobs=sampling.logprobs,
            temperature=1.0 if sampling.temperature is None else sampling.temperature,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            max_tokens=max_tokens,
            seed=sampling.seed,
            stop=sampling.stop or None,
            presence_penalty=sampling.presence_penalty or 0.0,
            frequency_penalty=sampling.frequency_penalty or 0.0,
            structured_outputs=structured,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, job: GenerationJob, prompt: FittedPrompt) -> AsyncIterator[Event]:
        """Streams one generation; cancelling the consumer aborts it on the engine."""
        from vllm.inputs import TokensPrompt

        prompt_ids = prompt.ids
        limit = self.context_length
        requested = job.sampling.max_tokens
        if len(prompt_ids) >= limit or (requested is not None and len(prompt_ids) + requested > limit):
            raise context_length_error(len(prompt_ids), requested, limit)
        params = self._sampling_params(job.sampling, requested or limit - len(prompt_ids))
        # The engine needs ids unique among its live requests; a client may repeat its request id.
        engine_request_id = f"{job.request_id}-{next(self._ids)}"
        completion_tokens = cached_tokens = 0
        self.load.outstanding += 1
        try:
            yield Started(len(prompt_ids), self.name, prompt.dropped_turns, prompt.memories_used)
            stream = self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, engine_request_id)
            async for output in stream:
                # The prompt tokens the engine's prefix cache held (vLLM's RequestOutput).
                cached_tokens = output.num_cached_tokens or cached_tokens
                for choice in output.outputs:
                    completion_tokens += len(choice.token_ids)
                    logprobs = _logprobs(choice, job.sampling.logprobs) if job.sampling.logprobs is not None else []
                    if choice.text or logprobs:
                        yield Delta(choice.index, choice.text, len(choice.token_ids), [], logprobs, choice.token_ids)
                    if choice.finish_reason is not None:
                        yield ChoiceEnd(choice.index, choice.finish_reason)
            yield End(len(prompt_ids), completion_tokens, cached_tokens)
        finally:
            self.load.outstanding -= 1


def _logprobs(choice: Any, top: int) -> list[TokenLogprob]:
    """OpenAI's per-token log probabilities from vLLM's (a dict per position, token id -> Logprob,
    holding the sampled token and the `top` most likely)."""
    out = []
    for token_id, position in zip(choice.token_ids, choice.logprobs or (), strict=False):
        sampled = position[token_id]
        ranked = sorted(position.values(), key=lambda p: p.rank or 0)[:top] if top else []
        out.append(
            TokenLogprob(
                sampled.decoded_token or "",
                max(float(sampled.logprob), -9999.0),
                [(p.decoded_token or "", max(float(p.logprob), -9999.0)) for p in ranked],
            )
        )
    return out


def detect_devices(setting: str) -> list[str]:
    if setting == "cpu":
        return ["cpu"]
    if setting != "auto":
        devices = [f"cuda:{d.strip()}" for d in setting.split(",") if d.strip()]
        if not devices:
            raise ValueError(f"devices must be 'auto', 'cpu' or GPU ids like '0,1', not {setting!r}")
        return devices
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA means the CPU build
        count = 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


class EnginePool:
    """The engines of one model; each request goes to the engine that served its affinity key
    last unless that one is overloaded, else to the least loaded (services/common/placement.py).

    The figures are the engines' own, as their stat loggers report them after every step, and
    the requests this pool handed each of them; nothing is fetched on the request path."""

    kind = "vllm"

    def __init__(
        self,
        model_name: str,
        model_path: Path,
        tokenizer: ChatTokenizer,
        engines: list[VllmEngine],
        limits: PromptLimits | None = None,
        overload: placement.Overload | None = None,
        affinity_sessions: int = 100_000,
    ):
        self.model_name = model_name
        self.model_path = model_path
        self.tokenizer = tokenizer
        self.engines = engines
        self.limits = limits or PromptLimits()
        self.tools = ToolCalling(self.limits.tool_parser, tokenizer.hf)
        self.overload = overload or placement.Overload()
        self.affinity = placement.AffinityMap(affinity_sessions)

    @classmethod
    def start(cls, settings: InferenceSettings, model_path: Path) -> EnginePool:
        devices = detect_devices(settings.devices)
        log.info("starting engines", extra={"devices": devices, "model": str(model_path)})
        if devices == ["cpu"]:
            engines = _start_cpu_engines(settings, model_path)
        else:
            engines = [VllmEngine(f"engine-{i}", device, model_path, settings) for i, device in enumerate(devices)]
        limits = PromptLimits(settings.completion_reserve_tokens, settings.recall_max_tokens, settings.tool_parser)
        return cls(
            settings.served_model_name,
            model_path,
            ChatTokenizer(model_path),
            engines,
            limits,
            placement.Overload(settings.placement_running_share, settings.placement_kv_cache_usage),
            settings.placement_affinity_sessions,
        )

    @property
    def context_length(self) -> int:
        return self.engines[0].context_length

    @property
    def source(self) -> str:
        return str(self.model_path)

    @property
    def engine_count(self) -> int:
        return len(self.engines)

    def shutdown(self) -> None:
        for engine in self.engines:
            engine.shutdown()

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise unknown_model_error(model)

    async def count_tokens(self, model: str, messages: list[dict[str, Any]]) -> int:
        self._check_model(model)
        return len(await asyncio.to_thread(self.tokenizer.encode_chat, messages))

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        self._check_model(job.model)
        tokenizer = self.tokenizer
        plan = plan_tools(self.tools, job)
        # Tokenizing and templating are CPU work: off the event loop.
        if job.raw_prompt:
            prompt = await asyncio.to_thread(tokenizer.raw_prompt, job)
        else:
            prompt = await asyncio.to_thread(
                fit_job, job, tokenizer.encode_chat, tokenizer.count_text, self.context_length, self.limits
            )
        engine = self.place(job.affinity_key)
        events = engine.generate(job, prompt)
        async for event in parse_tool_calls(plan, events) if plan else events:
            yield event

    def place(self, affinity_key: str) -> VllmEngine:
        by_name = {engine.name: engine for engine in self.engines}
        loads = {engine.name: engine.load.placement_load() for engine in self.engines}
        name, reason = placement.choose(loads, affinity_key, self.affinity, self.overload)
        PLACEMENTS.labels(reason).inc()
        return by_name[name]

    def load(self) -> list[LoadFigures]:
        return [engine.load.now() for engine in self.engines]


def _start_cpu_engines(settings: InferenceSettings, model_path: Path) -> list[VllmEngine]:
    """`cpu_engines` engines, each on its own share of the cores and KV cache (sizing.py), their
    threads then lowered below the mesh's services."""
    plans = sizing.plan_cpu_engines(
        sizing.Machine.detect(),
        settings.cpu_engines,
        settings.cpu_threads_bind,
        settings.cpu_reserved_cores,
        settings.cpu_kv_cache_gib,
    )
    engines = []
    if len(plans) == 1:
        log.info("CPU engine sized to the machine", extra={"engine_env": sizing.apply(plans[0])})
        engines.append(VllmEngine("engine-0", "cpu", model_path, settings))
    else:
        operator_set = [key for key in plans[0].env() if key in os.environ]
        for index, plan in enumerate(plans):
            with sizing.engine_environment(plan, operator_set) as env:
                log.info("CPU engine sized to its share of the machine", extra={"engine": index, "engine_env": env})
                engines.append(VllmEngine(f"engine-{index}", "cpu", model_path, settings))
    if settings.cpu_engine_nice:
        import psutil

        engine_processes = [p.pid for p in psutil.Process().children(recursive=True)]
        sizing.lower_priority(settings.cpu_engine_nice, engine_processes)
    return engines
