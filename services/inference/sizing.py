"""The CPU engine sized to the machine it runs on.

vLLM's CPU build, left to itself, binds its compute threads to all cores but one and keeps that
one for its scheduler process ("reserved_cpus"); on a small machine that leaves much of the CPU
unused (on 2 cores: one core computes, and the serving benchmark reads 1.6x more output
tokens/s with both). llmmesh binds the engine's OpenMP threads to every core this process may
use, reserves none, and gives the KV cache a share of the memory that is free. Each choice is a
setting, and an environment variable the operator set already (VLLM_CPU_OMP_THREADS_BIND,
VLLM_CPU_NUM_OF_RESERVED_CPU, OMP_NUM_THREADS, VLLM_CPU_KVCACHE_SPACE) wins over it.

Several CPU engines (a small box serving several sessions at once, or a test of placement across
engines) split the cores into contiguous groups, one per engine, and the KV cache memory evenly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

GIB = 1 << 30
# The KV cache takes at most this share of the memory available at start, within these bounds.
KV_SHARE = 0.25
KV_MIN_GIB, KV_MAX_GIB = 1, 64


@dataclass(frozen=True)
class Machine:
    cpus: tuple[int, ...]
    available_memory: int

    @classmethod
    def detect(cls) -> Machine:
        cpus = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
        return cls(cpus or tuple(range(os.cpu_count() or 1)), _available_memory())


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def core_ranges(cpus: Iterable[int]) -> str:
    """Core ids as vLLM's bind syntax: ``0-3,6,8-9``."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def count_cores(bind: str) -> int:
    return len(expand_cores(bind))


def expand_cores(bind: str) -> list[int]:
    """vLLM's bind syntax (``0-3,6``) as core ids."""
    cores: list[int] = []
    for part in bind.split(","):
        low, _, high = part.strip().partition("-")
        cores += range(int(low), int(high or low) + 1)
    return cores


@dataclass(frozen=True)
class CpuEnginePlan:
    bind: str
    threads: int
    reserved: int
    kv_cache_gib: int

    def env(self) -> dict[str, str]:
        return {
            "VLLM_CPU_OMP_THREADS_BIND": self.bind,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": str(self.reserved),
            "OMP_NUM_THREADS": str(self.threads),
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
        }


def plan_cpu_engine(machine: Machine, bind: str = "auto", reserved: int = 0, kv_cache_gib: int = 0) -> CpuEnginePlan:
    """`bind`: "auto" (every core of `machine`) or vLLM's syntax; `kv_cache_gib` 0: a share of
    the available memory."""
    cores = core_ranges(machine.cpus) if bind == "auto" else bind
    if kv_cache_gib <= 0:
        kv_cache_gib = min(KV_MAX_GIB, max(KV_MIN_GIB, int(machine.available_memory * KV_SHARE / GIB)))
    return CpuEnginePlan(cores, count_cores(cores), reserved, kv_cache_gib)


def plan_cpu_engines(
    machine: Machine, engines: int, bind: str = "auto", reserved: int = 0, kv_cache_gib: int = 0
) -> list[CpuEnginePlan]:
    """`engines` plans: the cores of `bind` in contiguous groups, one per engine (engines share
    cores only when there are fewer cores than engines), and the KV cache memory of
    `plan_cpu_engine` split evenly (at least KV_MIN_GIB each)."""
    whole = plan_cpu_engine(machine, bind, reserved, kv_cache_gib)
    if engines <= 1:
        return [whole]
    cores = expand_cores(whole.bind)
    kv_each = max(KV_MIN_GIB, whole.kv_cache_gib // engines)
    plans = []
    for index in range(engines):
        if len(cores) < engines:
            share = [cores[index % len(cores)]]
        else:
            share = cores[index * len(cores) // engines : (index + 1) * len(cores) // engines]
        group = core_ranges(share)
        plans.append(CpuEnginePlan(group, count_cores(group), reserved, kv_each))
    return plans


@contextlib.contextmanager
def engine_environment(plan: CpuEnginePlan, operator_set: Iterable[str]) -> Iterator[dict[str, str]]:
    """The plan in the environment while one of several engines starts (its process inherits
    it), except for the variables in `operator_set`; yields what the engine runs with."""
    keep = set(operator_set)
    saved = {key: os.environ.get(key) for key in plan.env()}
    for key, value in plan.env().items():
        if key not in keep:
            os.environ[key] = value
    try:
        yield {key: os.environ[key] for key in plan.env()}
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def apply(plan: CpuEnginePlan, environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """Puts the plan in the environment the engine process inherits, under any value already
    there; returns what the engine will run with."""
    for key, value in plan.env().items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in plan.env()}


def lower_priority(niceness: int, pids: Iterable[int]) -> int:
    """Lowers every thread of the processes `pids` (the engine's, its compute threads included)
    by `niceness`, so the mesh's own services on the same cores are scheduled first and the
    engine takes what they leave. Linux's nice is per thread: each one is set (threads started
    later inherit it). Returns how many threads were lowered."""
    lowered = 0
    for pid in pids:
        try:
            tids = [int(task) for task in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
                lowered += 1
            except ProcessLookupError:
                continue
    return lowered
