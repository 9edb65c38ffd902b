"""The shared server bootstrap refuses a taken port with a clear message."""

from __future__ import annotations

import socket

import pytest

from services.common.server import ServiceSpec, build_server
from services.common.settings import ServiceSettings


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ServiceSettings(grpc_port=port)
        spec = ServiceSpec(name="demo", grpc_services=[], register=lambda server: None)

        with pytest.raises(RuntimeError, match=rf"demo: cannot listen on 127\.0\.0\.1:{port}"):
            build_server(spec, settings)
