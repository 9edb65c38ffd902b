"""Prometheus metrics every service exports, and the endpoint that serves them."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_HANDLED = Counter(
    "llmmesh_grpc_server_handled_total",
    "gRPC calls handled, by method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "llmmesh_grpc_server_handling_seconds",
    "Time from the start of a gRPC call to its end (whole stream for streaming calls).",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def start_metrics_endpoint(host: str, port: int) -> None:
    """Serves /metrics on its own port; port 0 means no endpoint."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics endpoint up", extra={"metrics_port": port})
