"""The benchmark harness's parsing and formatting (the benchmarks themselves run in `make bench`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.harness import (
    Report,
    Row,
    Target,
    format_report,
    machine,
    machine_line,
    percentile,
    plot_report,
    write_results,
)
from bench.hops import parse_wrk

WRK_OUTPUT = """Running 4s test @ http://127.0.0.1:48080/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   165.02ms   20.11ms 240.00ms   80.00%
  Latency Distribution
     50%  165.00ms
     75%  180.00ms
     90%  187.70ms
     99%    1.02s
  389 requests in 4.00s, 300.00KB read
  Non-2xx or 3xx responses: 3
Requests/sec:     97.20
Transfer/sec:     75.00KB
"""


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    figures = parse_wrk(WRK_OUTPUT)

    assert figures == {
        "req_s": 97.2,
        "requests": 389.0,
        "p50_ms": 165.0,
        "p90_ms": 187.7,
        "p99_ms": 1020.0,
        "errors": 3.0,
    }


def test_percentile_is_the_nearest_rank_and_nan_for_nothing() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100, shuffled order must not matter
    values.reverse()

    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (51.0, 100.0, 100.0)
    assert math.isnan(percentile([], 0.5))


def report() -> Report:
    return Report(
        benchmark="demo",
        description="two cases",
        rows=[Row("a", {"req_s": 1234.5, "p50_ms": 1.25}), Row("b", {"req_s": 99.0})],
        targets=[Target("p50", 1.25, "<= 5 ms", True), Target("rate", 99.0, ">= 100", False)],
        plot_metrics=["req_s"],
    )


def test_format_report_lists_every_case_and_target() -> None:
    text = format_report(report())

    assert "== demo: two cases" in text
    assert "1,234" in text
    assert "target p50: 1.25 (goal <= 5 ms) -> met" in text
    assert "target rate: 99.0 (goal >= 100) -> NOT met" in text
    row_b = next(line for line in text.splitlines() if line.startswith("b "))
    assert row_b.split()[-1] == "-"


def test_results_json_and_plot_are_written(tmp_path: Path) -> None:
    path = write_results([report()], tmp_path)
    plot_report(report(), tmp_path / "demo.png")

    payload = json.loads(path.read_text())
    assert payload["reports"][0]["rows"][0]["metrics"]["req_s"] == 1234.5
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_machine_is_recorded_with_its_cpu_and_instruction_sets(tmp_path: Path) -> None:
    cpuinfo, meminfo = tmp_path / "cpuinfo", tmp_path / "meminfo"
    processor = "cpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"
    cpuinfo.write_text(f"processor\t: 0\n{processor}\nprocessor\t: 1\n{processor}")
    meminfo.write_text("MemTotal:       24683292 kB\nMemFree:         1000000 kB\n")

    info = machine(cpuinfo, meminfo)

    assert info["cpu_model"] == "AMD EPYC"
    assert info["cpu_id"] == "family 23 model 49"
    assert info["cpu_isa"] == ["avx2"]
    assert info["memory_gib"] == 23.5
    assert info["cpus"] >= 1
    assert machine_line(info).startswith("machine: AMD EPYC (family 23 model 49), ")
    assert "(avx2), 23.5 GiB" in machine_line(info)


def test_a_machine_without_proc_files_is_still_recorded(tmp_path: Path) -> None:
    info = machine(tmp_path / "absent", tmp_path / "absent")

    assert info["cpu_isa"] == []
    assert "memory_gib" not in info
    assert "none of avx2" in machine_line(info)


def test_results_name_the_machine(tmp_path: Path) -> None:
    payload = json.loads(write_results([report()], tmp_path).read_text())

    assert set(payload["machine"]) >= {"platform", "python", "cpus", "cpu_model", "cpu_isa"}
