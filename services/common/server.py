"""Server bootstrap shared by every gRPC service.

Builds a ``grpc.aio`` server with the common interceptor, the standard health service and
reflection, serves until SIGTERM/SIGINT, then drains: health flips to NOT_SERVING first so
load balancers stop sending, in-flight calls get ``shutdown_grace_s`` to finish.

Once a service has started, everything alive (modules, models, configuration) is moved out of
the garbage collector's reach (``gc.freeze``): a full collection then walks only what serving
allocated since, instead of pausing the event loop for the whole heap. Full collections
measured before: 50-68 ms in the gateway while serving, 145 ms in memory and 434 ms in the
inference service (torch, vLLM) at their stop, each such pause stalling every stream through
the process; with four 200-token streams at a time, TTFT p90 went from 68-97 ms to 25 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import MeshError
from services.common.interceptors import ServerInterceptor
from services.common.logging import configure_logging
from services.common.metrics import start_metrics_endpoint
from services.common.settings import ServiceSettings

log = logging.getLogger(__name__)

Registrar = Callable[[grpc.aio.Server], None]
ErrorTranslator = Callable[[Exception], MeshError | None]


@dataclass
class Sidecar:
    """Something that runs beside the gRPC server (e.g. an HTTP front end)."""

    run: Callable[[], Coroutine[Any, Any, None]]
    # Asks `run` to finish gracefully; it gets shutdown_grace_s, then is cancelled.
    stop: Callable[[], None]


@dataclass
class ServiceSpec:
    """What a service contributes to the common bootstrap."""

    name: str
    # Full proto names of the services it serves, e.g. "llmmesh.memory.v1.MemoryService".
    grpc_services: Sequence[str]
    register: Registrar
    sidecars: list[Sidecar] = field(default_factory=list)
    # Maps the service's own failures (e.g. a store that went away) to statuses; None: not mine.
    translate_error: ErrorTranslator | None = None


def build_server(spec: ServiceSpec, settings: ServiceSettings) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(spec.name, spec.translate_error)],
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    spec.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*spec.grpc_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    try:
        bound = server.add_insecure_port(settings.grpc_address)
    except RuntimeError as exc:  # grpcio raises when the address is taken
        raise RuntimeError(f"{spec.name}: cannot listen on {settings.grpc_address} (in use?): {exc}") from None
    if bound == 0:
        raise RuntimeError(f"{spec.name}: cannot listen on {settings.grpc_address} (in use?)")
    return server, health_servicer


async def _set_health(servicer: health.aio.HealthServicer, names: Sequence[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *names):
        await servicer.set(name, status)


@contextlib.asynccontextmanager
async def running_server(spec: ServiceSpec, settings: ServiceSettings) -> AsyncIterator[grpc.aio.Server]:
    """Starts the server and marks it SERVING; on exit drains it gracefully."""
    server, health_servicer = build_server(spec, settings)
    await server.start()
    await _set_health(health_servicer, spec.grpc_services, serving=True)
    log.info("serving", extra={"address": settings.grpc_address, "services": list(spec.grpc_services)})
    try:
        yield server
    finally:
        await _set_health(health_servicer, spec.grpc_services, serving=False)
        await server.stop(settings.shutdown_grace_s)
        log.info("stopped")


async def serve(
    spec: ServiceSpec,
    settings: ServiceSettings,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Runs a service until SIGTERM or SIGINT: startup, serve, drain, shutdown."""
    configure_logging(spec.name, settings.log_level, settings.log_json)
    start_metrics_endpoint(settings.host, settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if startup is not None:
        await startup()
    freeze_startup_heap()
    try:
        async with running_server(spec, settings):
            tasks = [asyncio.create_task(sidecar.run()) for sidecar in spec.sidecars]
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter:
                    log.error("sidecar stopped; stopping the service", exc_info=task.exception())
            log.info("shutting down")
            waiter.cancel()
            for sidecar in spec.sidecars:
                sidecar.stop()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_grace_s)
                for task in pending:
                    task.cancel()
    finally:
        if shutdown is not None:
            await shutdown()


def freeze_startup_heap() -> int:
    """Collects once, then freezes what is left (see the module's docstring); returns how many
    objects the collector no longer visits."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("startup heap frozen", extra={"objects": frozen})
    return frozen


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Entry point for a service's ``__main__``: uvloop when present."""
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
