"""What operators rely on: Prometheus metrics on every service, health and reflection."""

from __future__ import annotations

import time

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration


def _metrics(stack: Stack, name: str) -> str:
    port = stack.settings.port(name)
    return httpx.get(f"http://{stack.settings.host}:{port}/metrics", timeout=10).text


def test_every_service_exports_metrics_of_the_requests_it_served(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, extra_body={"session_id": "metrics"}
    )

    gateway = _metrics(stack, "gateway_http")
    assert 'llmmesh_gateway_http_requests_total{route="/v1/chat/completions",status="200"}' in gateway
    assert 'llmmesh_gateway_tokens_total{kind="completion"}' in gateway
    for service, method in (("inference", "Generate"), ("memory", "Append"), ("router", "Route")):
        line = f'llmmesh_grpc_server_handled_total{{code="OK",method="{method}",service="{service}"}}'
        # A stream is counted once its handler returns, which may be just after the client has its answer.
        deadline = time.monotonic() + 5
        while line not in _metrics(stack, f"{service}_metrics") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert line in _metrics(stack, f"{service}_metrics"), f"{service} does not count {method}"


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("memory", "llmmesh.memory.v1.MemoryService"),
        ("router", "llmmesh.router.v1.RouterService"),
        ("inference", "llmmesh.inference.v1.InferenceService"),
        ("gateway_grpc", "llmmesh.chat.v1.ChatService"),
    ],
)
def test_services_answer_health_and_reflection(stack: Stack, name: str, service: str) -> None:
    with grpc.insecure_channel(f"{stack.settings.host}:{stack.settings.port(name)}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert service in services
        assert "grpc.health.v1.Health" in services
