"""Starts the local stack in the background, exactly as `make run` does, for the
integration tests and the benchmarks; stops it with Ctrl-C's signal and reports what, if
anything, outlived it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from services.common.keys import new_key
from services.stack.readiness import mesh_ready
from services.stack.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningStack:
    settings: StackSettings
    log: Path
    pid: int
    # A key of the default tenant the gateway was seeded with.
    api_key: str
    # Filled in on exit: processes still alive after the stop.
    leftovers: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.settings.public_url}/v1"

    @property
    def grpc_target(self) -> str:
        """Envoy's public port: the gateway's ChatService (internal services are not routed there)."""
        return f"{self.settings.host}:{self.settings.port('public')}"

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of `api_key`."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def internal_target(self, service: str) -> str:
        """An internal service's own port ("inference", "memory", "router"), reachable only from inside."""
        return f"{self.settings.host}:{self.settings.port(service)}"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes], descendants: list[psutil.Process]) -> list[str]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    _, alive = psutil.wait_procs(descendants, timeout=15)
    leftovers = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            leftovers.append(f"{p.pid} {' '.join(p.cmdline()[:3])}")
            p.kill()
    return leftovers


@contextlib.contextmanager
def background_stack(
    run_dir: Path, port_offset: int, env: dict[str, str] | None = None, timeout_s: float = 900
) -> Iterator[RunningStack]:
    """Yields once the mesh answers /v1/models with a model through Envoy."""
    run_dir.mkdir(parents=True, exist_ok=True)
    api_key = new_key()
    extra = {
        "LLMMESH_STACK_PORT_OFFSET": str(port_offset),
        "LLMMESH_STACK_RUN_DIR": str(run_dir),
        "LLMMESH_API_KEYS": api_key,
        **(env or {}),
    }
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    settings = StackSettings(port_offset=port_offset, run_dir=run_dir)
    log = run_dir / "stack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.stack"], cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    stack = RunningStack(settings, log, proc.pid, api_key)
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + timeout_s
        ready = mesh_ready(settings.public_url, api_key)
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not come up (exit code {proc.poll()}):\n{stack.log_tail(80)}")
            time.sleep(1.0)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        yield stack
    finally:
        if proc.poll() is None:
            stack.leftovers = _stop(proc, descendants)
