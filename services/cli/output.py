"""What the operator subcommands print: result lines on stdout, one ``error: ...`` line on
stderr, tables in aligned columns."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence


def one_line(text: str) -> str:
    """Names and messages from a server or a file, on one line (no newline can forge output)."""
    return " ".join(text.split())


def utc(unix_s: int) -> str:
    if unix_s <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix_s))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    everything = [header, *rows]
    widths = [max(len(row[column]) for row in everything) for column in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in everything)
    return "\n".join(line.rstrip() for line in lines)


def say(text: str) -> None:
    print(text, flush=True)


def error(text: str) -> int:
    """Prints ``error: text`` and returns the exit code of a failed command (1)."""
    sys.stdout.flush()
    print(f"error: {text}", file=sys.stderr, flush=True)
    return 1
