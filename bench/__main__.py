"""make bench: run the benchmarks, print their tables, write JSON + PNG to bench-results/.

python -m bench                 # every benchmark
python -m bench hops --quick    # one, shorter
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.harness import Context, format_report, machine, machine_line, plot_report, write_results
from bench.registry import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    out_dir = args.out / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    ctx = Context(out_dir=out_dir, quick=args.quick)
    print(machine_line(machine()), flush=True)
    reports = []
    for name in args.names or list(BENCHMARKS):
        print(f"-- running {name} ...", flush=True)
        started = time.monotonic()
        report = BENCHMARKS[name].run(ctx)
        report.notes.append(f"ran for {time.monotonic() - started:.0f} s")
        reports.append(report)
        plot_report(report, out_dir / f"{name}.png")
        print(format_report(report), flush=True)
        write_results(reports, out_dir)  # keep what finished if a later benchmark fails
    latest = args.out / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(out_dir.name)
    print(f"\nresults: {out_dir}/results.json and one PNG per benchmark")
    return 0


if __name__ == "__main__":
    sys.exit(main())
