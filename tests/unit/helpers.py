"""Small helpers shared by the unit tests (not fixtures: plain functions)."""

from __future__ import annotations

import random
import socket

# Below the kernel's ephemeral range (32768 and up on Linux), where the OS puts the source ports
# of outgoing connections and every port-0 bind: a port handed out here and bound a moment later
# cannot be taken in between by one of those. Above it start the integration stacks (offset 30000).
_PORTS = range(15000, 30000)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, never the same one twice in a process."""
    while True:
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
