"""Starting and stopping what the benchmarks measure: the llmmesh stack (as `make run`
starts it) and vLLM's own OpenAI server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import redis

from services.memory.store import INDEX_STREAM
from services.stack.launcher import RunningStack, background_stack
from services.stack.readiness import http_ok

MODEL = "smollm2-135m-instruct"


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    ready = http_ok(url)
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            return
        time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    raise RuntimeError(f"{url} did not come up (exit code {proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def llmmesh_stack(run_dir: Path, port_offset: int, **env: str) -> Iterator[RunningStack]:
    """Yields the running stack (its public URL and an API key); service logs at warning,
    since a log line per request would be measured too."""
    quiet = {f"LLMMESH_{svc}_LOG_LEVEL": "WARNING" for svc in ("GATEWAY", "MEMORY", "ROUTER", "INFERENCE")}
    with background_stack(run_dir, port_offset, {**quiet, **env}) as stack:
        yield stack


def wait_indexed(stack: RunningStack, timeout_s: float = 300.0) -> float:
    """Waits until the memory indexer's queue is empty (every stored turn embedded and in the
    vector store), so that one run's background work does not land in the next run; returns
    the seconds waited."""
    url = stack.settings.redis_url or f"redis://{stack.settings.host}:{stack.settings.port('redis')}/0"
    started = time.monotonic()
    with redis.Redis.from_url(url) as client:
        while client.xlen(INDEX_STREAM):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the memory indexer's queue was not empty after {timeout_s:.0f} s")
            time.sleep(0.2)
    return time.monotonic() - started


_ENGINE_VARIABLES = (
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_CPU_NUM_OF_RESERVED_CPU",
    "OMP_NUM_THREADS",
    "VLLM_CPU_KVCACHE_SPACE",
)


@contextlib.contextmanager
def vllm_server(
    model_path: Path, port: int, run_dir: Path, engine_env: dict[str, str], name: str, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """vLLM's own OpenAI server on the same model and serving settings as llmmesh's inference;
    `engine_env` holds its CPU engine's settings (vLLM's VLLM_CPU_* variables), `extra_args`
    more of its command-line options."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"{name}.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path), "--served-model-name", MODEL,
        "--dtype", "float32", "--enforce-eager", "--max-num-seqs", "64",
        "--host", "127.0.0.1", "--port", str(port), "--disable-log-stats", *extra_args,
    ]  # fmt: skip
    inherited = {k: v for k, v in os.environ.items() if k not in _ENGINE_VARIABLES}
    env = {**inherited, "HF_HUB_OFFLINE": "1", **engine_env}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/health", proc, log, timeout_s=600)
        yield base
    finally:
        _stop(proc)


_PROCESSES = ("envoy", "gateway", "memory", "router", "inference", "valkey")


class CpuMeter:
    """CPU seconds (user + system) each process of a running stack spends, by name, plus the
    load generator (this process). CPU per unit of work is what a noisy machine changes least:
    wall-clock figures can read 2x apart from one run to the next, CPU per request hardly."""

    def __init__(self, stack_pid: int) -> None:
        self._procs: dict[str, list[psutil.Process]] = {name: [] for name in (*_PROCESSES, "load generator")}
        self._procs["load generator"].append(psutil.Process())
        for proc in psutil.Process(stack_pid).children(recursive=True):
            command = " ".join(proc.cmdline())
            for name in _PROCESSES:
                if f"services.{name}" in command or (name in ("envoy", "valkey") and name in command):
                    self._procs[name].append(proc)
                    break

    def _seconds(self) -> dict[str, float]:
        spent = {}
        for name, procs in self._procs.items():
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
            spent[name] = total
        return spent

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """Yields a dict filled, when the block ends, with each process's CPU seconds in it."""
        before = self._seconds()
        spent: dict[str, float] = {}
        yield spent
        after = self._seconds()
        spent.update({name: after[name] - before[name] for name in after})
