"""The whole stack, started the way `make run` starts it, on shifted ports."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from services.stack.launcher import REPO, RunningStack, background_stack

# Keeps the suite clear of a `make run` on the default ports (and of another run of the suite).
# Every port of the stack (6379..9901 plus the offset) stays below Linux's ephemeral range
# (32768-60999): a client connection's local port there once took the port a stack was
# about to listen on.
PORT_OFFSET = int(os.environ.get("LLMMESH_TEST_PORT_OFFSET", "20000"))
MODEL = "smollm2-135m-instruct"

Stack = RunningStack
__all__ = ["MODEL", "REPO", "Stack"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with background_stack(tmp_path_factory.mktemp("stack"), PORT_OFFSET) as running:
        yield running
    # Ctrl-C (SIGINT to the runner) must take every process down with it, engines included.
    assert not running.leftovers, f"processes left running after Ctrl-C: {running.leftovers}\n{running.log_tail()}"
