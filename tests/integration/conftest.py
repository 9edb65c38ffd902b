"""The whole stack, started the way `make run` starts it, on shifted ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
PORT_OFFSET = 30000  # keeps the suite clear of a `make run` on the default ports
MODEL = "smollm2-135m-instruct"
READY_LINE = "llmmesh is up"


@dataclass
class Stack:
    host: str
    public_port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.public_port}/v1"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.public_port}"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if READY_LINE in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-80:])
    raise RuntimeError(f"the stack did not come up (exit code {proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen[bytes], descendants: list[psutil.Process]) -> list[str]:
    """Ctrl-C, as a person at `make run` would; returns what is still alive afterwards."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    _, alive = psutil.wait_procs(descendants, timeout=15)
    leftovers = [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in alive if p.is_running()]
    for p in alive:
        p.kill()
    return leftovers


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("stack")
    log = run_dir / "stack.log"
    env = {
        **os.environ,
        "LLMMESH_STACK_PORT_OFFSET": str(PORT_OFFSET),
        "LLMMESH_STACK_RUN_DIR": str(run_dir),
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.stack"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    stack = Stack("127.0.0.1", 8080 + PORT_OFFSET, log)
    try:
        _wait_ready(proc, log, timeout_s=900)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        yield stack
    except BaseException:
        proc.kill()
        raise
    leftovers = _stop(proc, descendants)
    assert not leftovers, f"processes left running after Ctrl-C: {leftovers}\n{stack.log_tail()}"
