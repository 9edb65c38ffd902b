"""The shared server bootstrap: a taken port is a clear error; the startup heap is frozen."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.server import ServiceSpec, build_server
from services.common.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ServiceSettings(grpc_port=port)
        spec = ServiceSpec(name="demo", grpc_services=[], register=lambda server: None)

        with pytest.raises(RuntimeError, match=rf"demo: cannot listen on 127\.0\.0\.1:{port}"):
            build_server(spec, settings)


_FREEZE_CHECK = """
import gc

from services.common.server import freeze_startup_heap

loaded = [{"model": i} for i in range(1000)]  # stands in for modules and models
gc.unfreeze()
before = gc.get_freeze_count()
frozen = freeze_startup_heap()
assert frozen >= before + len(loaded)
assert gc.get_freeze_count() == frozen
assert not any(obj is loaded for obj in gc.get_objects())  # no generation holds it
"""


def test_what_startup_left_is_out_of_the_collectors_reach() -> None:
    """A full collection after startup walks only what serving allocates (server.py). In a
    fresh interpreter: in the suite's, threads left by other tests free frozen objects between
    two readings of the freeze count."""
    result = subprocess.run(
        [sys.executable, "-c", _FREEZE_CHECK], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
