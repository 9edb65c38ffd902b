"""Errors that cross service boundaries.

A service fails an RPC with the standard rich gRPC status: the status code and message, and a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer whose ``ErrorInfo`` (domain
``llmmesh``) carries the machine-readable reason (an OpenAI error code such as
``model_not_found``) and, for a bad request, the parameter at fault (``metadata["param"]``).
Any gRPC client can read it; the gateway turns it into OpenAI's error shape.

Only a ``MeshError`` says what went wrong to the caller. Anything else escaping a handler, a
``ValueError`` included, is a bug: the caller gets INTERNAL "internal error" and the log gets
the traceback.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc.error_details_pb2 import ErrorInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

DOMAIN = "llmmesh"
INTERNAL_MESSAGE = "internal error"


class MeshError(Exception):
    """A failure with a gRPC status, an OpenAI-style reason code and, for a bad request, the
    parameter at fault (named as the client sent it, e.g. ``response_format.json_schema.schema``)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.param = param


class InvalidArgumentError(MeshError):
    """The client's fault: the request cannot be served as it stands (INVALID_ARGUMENT, a 400).
    Validation raises this, never a bare ValueError, which would read as a bug."""

    def __init__(self, message: str, param: str | None = None, reason: str = "") -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message, reason, param)


def to_status(error: MeshError) -> grpc.Status:
    """The rich status a server aborts with (``context.abort_with_status``)."""
    details = []
    if error.reason or error.param:
        info = ErrorInfo(reason=error.reason, domain=DOMAIN, metadata={"param": error.param} if error.param else {})
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
    status: grpc.Status = rpc_status.to_status(Status(code=error.code.value[0], message=error.message, details=details))
    return status


def from_rpc_error(exc: grpc.aio.AioRpcError) -> MeshError:
    """The MeshError a failed call carried. A plain status (from Envoy, a peer that is gone, a
    server outside the mesh) keeps its code and message, with no reason and no param."""
    code = exc.code()
    error = MeshError(code, exc.details() or code.name)
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details that contradict the status line: trust the status line
        status = None
    for detail in status.details if status is not None else ():
        info = ErrorInfo()
        if detail.Unpack(info) and info.domain == DOMAIN:
            error.reason = info.reason
            error.param = info.metadata.get("param") or None
            break
    return error
