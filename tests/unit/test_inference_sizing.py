"""The CPU engine's plan from the machine: every allowed core, none reserved, a share of memory
for the KV cache; settings and the operator's environment win."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.inference.sizing import GIB, Machine, apply, core_ranges, count_cores, lower_priority, plan_cpu_engine


@pytest.mark.parametrize(
    ("cpus", "bind"), [((0,), "0"), ((0, 1), "0-1"), ((0, 1, 2, 3, 6, 8, 9), "0-3,6,8-9"), ((5, 3, 4), "3-5")]
)
def test_core_ranges_round_trip(cpus: tuple[int, ...], bind: str) -> None:
    assert core_ranges(cpus) == bind
    assert count_cores(bind) == len(set(cpus))


def test_auto_takes_every_allowed_core_and_a_quarter_of_free_memory() -> None:
    plan = plan_cpu_engine(Machine(cpus=(2, 3), available_memory=24 * GIB))

    assert (plan.bind, plan.threads, plan.reserved, plan.kv_cache_gib) == ("2-3", 2, 0, 6)
    assert plan.env() == {
        "VLLM_CPU_OMP_THREADS_BIND": "2-3",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "OMP_NUM_THREADS": "2",
        "VLLM_CPU_KVCACHE_SPACE": "6",
    }


def test_the_kv_cache_stays_within_bounds() -> None:
    assert plan_cpu_engine(Machine((0,), GIB)).kv_cache_gib == 1
    assert plan_cpu_engine(Machine((0,), 1024 * GIB)).kv_cache_gib == 64


def test_settings_override_the_plan() -> None:
    plan = plan_cpu_engine(Machine((0, 1, 2, 3), 8 * GIB), bind="0-2", reserved=1, kv_cache_gib=3)

    assert (plan.bind, plan.threads, plan.reserved, plan.kv_cache_gib) == ("0-2", 3, 1, 3)


def test_the_operators_environment_wins() -> None:
    environ = {"VLLM_CPU_OMP_THREADS_BIND": "0", "OMP_NUM_THREADS": "1"}

    used = apply(plan_cpu_engine(Machine((0, 1), 8 * GIB)), environ)

    assert used["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert used["OMP_NUM_THREADS"] == "1"
    assert used["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert environ["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_the_machine_is_detected() -> None:
    machine = Machine.detect()

    assert machine.cpus
    assert machine.available_memory > 0


def test_every_thread_of_the_engine_process_is_lowered() -> None:
    code = "import threading, time\n[threading.Thread(target=time.sleep, args=(30,)).start() for _ in range(3)]\n"
    child = subprocess.Popen([sys.executable, "-c", code + "time.sleep(30)"])
    try:
        tasks = Path(f"/proc/{child.pid}/task")
        for _ in range(100):  # until its threads are up
            if len(list(tasks.iterdir())) >= 4:
                break
            time.sleep(0.05)

        lowered = lower_priority(5, [child.pid])

        assert lowered >= 4
        niceness = [int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]) for task in tasks.iterdir()]
        assert niceness == [5] * len(niceness)
    finally:
        child.kill()
        child.wait()
