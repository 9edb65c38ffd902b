"""The placement rule (services/common/placement.py), the engines' figures it reads, and the
CPU engines' shares of the machine."""

from __future__ import annotations

import os
import time

import pytest

from llmmesh.inference.v1 import inference_pb2
from services.common.placement import AffinityMap, Load, Overload, choose
from services.gateway.placement import affinity_key, replica_load
from services.gateway.settings import GatewaySettings
from services.inference import sizing
from services.inference.domain import LoadFigures

IDLE = Load(max_num_seqs=8)


def test_a_key_stays_where_it_went_while_that_target_is_not_overloaded() -> None:
    affinity = AffinityMap(10)
    loads = {"a": IDLE, "b": IDLE}
    assert choose(loads, "k", affinity, Overload()) == ("a", "least_loaded")
    # "a" now runs more than "b", yet the key's prefix is cached on "a".
    loads = {"a": Load(running=3, max_num_seqs=8), "b": IDLE}
    assert choose(loads, "k", affinity, Overload()) == ("a", "affinity")


@pytest.mark.parametrize(
    "busy",
    [
        Load(running=1, waiting=1, max_num_seqs=8),  # requests queue
        Load(running=8, max_num_seqs=8),  # the batch is full
        Load(running=1, kv_cache_usage=0.95, max_num_seqs=8),  # the KV cache is nearly full
    ],
)
def test_an_overloaded_target_loses_the_key_to_the_least_loaded(busy: Load) -> None:
    affinity = AffinityMap(10)
    affinity.remember("k", "a")
    assert choose({"a": busy, "b": IDLE, "c": Load(running=1)}, "k", affinity, Overload()) == ("b", "least_loaded")
    assert affinity.get("k") == "b"  # the next turn follows the prefix to its new place


def test_least_loaded_orders_by_waiting_then_running_then_kv_cache() -> None:
    affinity = AffinityMap(10)
    loads = {
        "queueing": Load(running=0, waiting=1),
        "busy": Load(running=5, kv_cache_usage=0.1),
        "full_cache": Load(running=2, kv_cache_usage=0.8),
        "light": Load(running=2, kv_cache_usage=0.2),
    }
    assert choose(loads, "", affinity, Overload()) == ("light", "least_loaded")
    assert len(affinity) == 0  # no key, nothing remembered


def test_one_target_is_the_only_choice_and_a_vanished_one_is_forgotten() -> None:
    affinity = AffinityMap(10)
    assert choose({"a": Load(waiting=5)}, "k", affinity, Overload()) == ("a", "only")
    assert choose({"b": IDLE, "c": IDLE}, "k", affinity, Overload()) == ("b", "least_loaded")


def test_the_affinity_map_keeps_the_most_recent_keys() -> None:
    affinity = AffinityMap(2)
    for key in ("k1", "k2", "k1", "k3"):
        affinity.remember(key, "a")
    assert (affinity.get("k1"), affinity.get("k2"), affinity.get("k3")) == ("a", None, "a")


def test_requests_not_yet_in_the_figures_run_and_finished_ones_are_gone() -> None:
    assert Load.of(outstanding=5, waiting=1, kv_cache_usage=0.1) == Load(4, 1, 0.1)
    assert Load.of(outstanding=1, waiting=2, kv_cache_usage=0.1) == Load(0, 1, 0.1)


def test_an_engine_that_reported_nothing_for_2_s_runs_only_what_it_was_handed_since() -> None:
    figures = LoadFigures("engine-0", "m", "cpu", running=3, waiting=2, kv_cache_usage=0.5, max_num_seqs=8)
    figures.outstanding = 5
    figures.reported_at = time.monotonic()
    assert figures.placement_load() == Load(3, 2, 0.5, 8)
    figures.reported_at -= 3
    figures.outstanding = 0
    assert figures.placement_load() == Load(0, 0, 0.0, 8)
    figures.outstanding = 1  # handed to it since, not reported yet
    assert figures.placement_load() == Load(1, 0, 0.0, 8)


def test_a_replica_is_the_sum_of_its_engines() -> None:
    reply = inference_pb2.GetLoadResponse(
        engines=[
            inference_pb2.EngineLoad(outstanding=3, waiting=1, kv_cache_usage=0.3, max_num_seqs=4),
            inference_pb2.EngineLoad(outstanding=1, kv_cache_usage=0.1, max_num_seqs=4),
            inference_pb2.EngineLoad(kv_cache_usage=0.2, max_num_seqs=4),
        ]
    )
    load = replica_load(reply)
    assert (load.running, load.waiting, load.max_num_seqs) == (3, 1, 12)
    assert load.kv_cache_usage == pytest.approx(0.2)


def test_the_affinity_key_is_a_hash_of_tenant_and_session() -> None:
    key = affinity_key("tenant-a", "session-1")
    assert key == affinity_key("tenant-a", "session-1")
    assert len(key) == 24
    assert "session-1" not in key
    assert key != affinity_key("tenant-b", "session-1")
    assert affinity_key("tenant-a", "") == ""


def test_inference_replicas_are_comma_separated_or_the_single_target() -> None:
    assert GatewaySettings(inference_target="h:1").inference_replicas == ["h:1"]
    settings = GatewaySettings.model_validate({"inference_targets": "a:1, b:2,a:1"})
    assert settings.inference_replicas == ["a:1", "b:2"]


def test_cpu_engines_split_the_cores_and_the_kv_cache() -> None:
    machine = sizing.Machine(cpus=(0, 1, 2, 3, 4), available_memory=64 * sizing.GIB)
    plans = sizing.plan_cpu_engines(machine, 2, kv_cache_gib=8)
    assert [(p.bind, p.threads, p.kv_cache_gib) for p in plans] == [("0-1", 2, 4), ("2-4", 3, 4)]
    # More engines than cores: they share.
    two_cores = sizing.Machine(cpus=(0, 1), available_memory=64 * sizing.GIB)
    assert [p.bind for p in sizing.plan_cpu_engines(two_cores, 3, kv_cache_gib=1)] == ["0", "1", "0"]
    assert sizing.plan_cpu_engines(machine, 1) == [sizing.plan_cpu_engine(machine)]


def test_an_engines_environment_is_set_while_it_starts_under_the_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    plan = sizing.CpuEnginePlan("2-3", 2, 0, 1)
    with sizing.engine_environment(plan, ["VLLM_CPU_KVCACHE_SPACE"]) as env:
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
