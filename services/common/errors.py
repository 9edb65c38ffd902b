"""Errors that cross service boundaries.

A service fails an RPC with a gRPC status plus a machine-readable reason in the trailing
metadata (``llmmesh-error-reason``); the gateway turns both into OpenAI's error shape.
"""

from __future__ import annotations

import grpc

REASON_KEY = "llmmesh-error-reason"


class MeshError(Exception):
    """A failure with a gRPC status and an OpenAI-style reason code."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def from_rpc_error(exc: grpc.aio.AioRpcError) -> MeshError:
    """The MeshError a failed call carried, reason included."""
    reason = ""
    for key, value in exc.trailing_metadata() or ():
        if key == REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
    return MeshError(exc.code(), exc.details() or exc.code().name, reason)
