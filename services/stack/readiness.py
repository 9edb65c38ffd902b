"""Polls every component of the local stack until it is healthy."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class Probe:
    name: str
    check: Callable[[], bool]


def grpc_serving(address: str, service: str) -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def http_ok(url: str, expect: bytes = b"", headers: dict[str, str] | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2.0) as response:
                return bool(response.status == 200 and expect in response.read())
        except (urllib.error.URLError, OSError):
            return False

    return check


def mesh_ready(public_url: str, api_key: str, embedding_model: str = "all-minilm-l6-v2") -> Callable[[], bool]:
    """The mesh answers through Envoy once the router has discovered a chat model to route to
    (the embedding model is listed from the start)."""

    def check() -> bool:
        request = urllib.request.Request(f"{public_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                models = json.loads(response.read()).get("data", [])
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return any(m.get("id") != embedding_model for m in models)

    return check


def redis_pong(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=1.0).ping())
        except redis.RedisError:
            return False

    return check


def wait_ready(
    probes: list[Probe], timeout_s: float, on_ready: Callable[[str], None], stopped: Callable[[], bool]
) -> bool:
    """Checks the probes in order (each waits for the one before); False on timeout or stop."""
    deadline = time.monotonic() + timeout_s
    for probe in probes:
        while not probe.check():
            if stopped() or time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        on_ready(probe.name)
    return True
