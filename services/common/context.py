"""The request id that follows a request through every service."""

from __future__ import annotations

import contextvars
import uuid

REQUEST_ID_HEADER = "x-request-id"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str:
    return request_id_var.get()


def call_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for an outgoing call: the current request id, if any. Passed on each call
    rather than by a client interceptor: grpc.aio wraps every intercepted call (and every
    message of an intercepted stream) in extra objects and tasks, measured at 70-250 us of
    CPU per unary call on a 2-core machine."""
    request_id = request_id_var.get()
    return () if request_id == "-" else ((REQUEST_ID_HEADER, request_id),)
