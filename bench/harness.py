"""The benchmark harness: every benchmark returns a Report, and the harness prints it as a
table, writes the raw figures to JSON and draws one PNG per benchmark. Adding a benchmark is
adding an entry to `bench.registry.BENCHMARKS`."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    """One measured case, e.g. ("llmmesh", {"output_tok_s": 90.1, ...})."""

    case: str
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    """A figure the project aims for; reported, never a reason to fail the run."""

    name: str
    measured: float
    goal: str
    met: bool


@dataclass
class Report:
    benchmark: str
    description: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Metrics drawn in the PNG, one panel each.
    plot_metrics: list[str] = field(default_factory=list)


@dataclass
class Context:
    out_dir: Path
    quick: bool
    port_offset: int = 40000


@dataclass
class Benchmark:
    name: str
    description: str
    run: Callable[[Context], Report]


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def format_report(report: Report) -> str:
    metrics: list[str] = []
    for row in report.rows:
        metrics += [m for m in row.metrics if m not in metrics]
    header = ["case", *metrics]
    lines = [[row.case, *(_fmt(row.metrics[m]) if m in row.metrics else "-" for m in metrics)] for row in report.rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [f"== {report.benchmark}: {report.description}", line(header), line(["-" * w for w in widths])]
    out += [line(cells) for cells in lines]
    for target in report.targets:
        mark = "met" if target.met else "NOT met"
        out.append(f"  target {target.name}: {_fmt(target.measured)} (goal {target.goal}) -> {mark}")
    out += [f"  note: {note}" for note in report.notes]
    return "\n".join(out)


def plot_report(report: Report, path: Path) -> None:
    metrics = report.plot_metrics or sorted({m for r in report.rows for m in r.metrics})[:4]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = [r for r in report.rows if metric in r.metrics]
        ax.bar(range(len(rows)), [r.metrics[metric] for r in rows], color="#4C72B0")
        ax.set_xticks(range(len(rows)), [r.case for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{report.benchmark}: {report.description}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(reports: list[Report], out_dir: Path) -> Path:
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "reports": [asdict(r) for r in reports],
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


# The instruction sets that move these figures: vLLM's CPU kernels and the embedding model
# use bfloat16 only where AVX-512 BF16 or AMX compute it. Two 2-CPU EPYC machines, one with
# AVX-512 BF16 and one with AVX2 only, read about 2x apart in engine tokens/s.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine(cpuinfo: Path = Path("/proc/cpuinfo"), meminfo: Path = Path("/proc/meminfo")) -> dict[str, Any]:
    """What the figures were measured on: two runs compare only on the same CPU model."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()}
    fields = _proc_fields(cpuinfo)
    info["cpu_model"] = fields.get("model name", platform.processor() or "unknown")
    if "cpu family" in fields and "model" in fields:  # a virtual CPU's name is often generic
        info["cpu_id"] = f"family {fields['cpu family']} model {fields['model']}"
    flags = set(fields.get("flags", "").split())
    info["cpu_isa"] = [flag for flag in _ISA_FLAGS if flag in flags]
    total_kib = _proc_fields(meminfo).get("MemTotal", "")
    if total_kib:
        info["memory_gib"] = round(int(total_kib.split()[0]) / 2**20, 1)
    return info


def machine_line(info: dict[str, Any]) -> str:
    memory = f", {info['memory_gib']} GiB" if "memory_gib" in info else ""
    isa = " ".join(info["cpu_isa"]) or "none of " + " ".join(_ISA_FLAGS)
    cpu = f"{info['cpu_model']} ({info['cpu_id']})" if "cpu_id" in info else info["cpu_model"]
    return f"machine: {cpu}, {info['cpus']} CPUs ({isa}){memory}, {info['platform']}"


def _proc_fields(path: Path) -> dict[str, str]:
    """The first value of each ``key: value`` line of a /proc file ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
