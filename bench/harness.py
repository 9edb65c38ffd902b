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
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()},
        "reports": [asdict(r) for r in reports],
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
