"""OpenAI's error shape (and Anthropic's, for the Messages API), and the one mapping from mesh
errors (gRPC statuses) to it."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.errors import MeshError, from_rpc_error

# gRPC status -> (HTTP status, OpenAI error type)
_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "request_cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}

# HTTP status -> Anthropic's error type (the Messages API's routes); any other 5xx: api_error.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "invalid_request_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class RateLimitError(MeshError):
    """A per-key limit is reached (429). `retry_after_s`: when the window has room again (the
    Retry-After header); None when waiting cannot help (a request larger than the limit)."""

    def __init__(
        self,
        message: str,
        retry_after_s: int | None,
        reason: str = "rate_limit_exceeded",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason)
        self.retry_after_s = retry_after_s
        # The refusing limit's x-ratelimit-* headers (limits.py).
        self.headers = headers or {}


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    @classmethod
    def invalid(cls, message: str, param: str | None = None, code: str | None = None) -> APIError:
        return cls(400, message, "invalid_request_error", code, param)

    @classmethod
    def from_mesh(cls, error: MeshError, retry_after_s: int = 0) -> APIError:
        """`retry_after_s` > 0: a 503 (a dependency is down) tells the client when to retry; a
        rate limit brings its own."""
        status, type_ = _HTTP.get(error.code, (500, "server_error"))
        reason = error.reason or None
        if reason == "invalid_request_error":  # a type, not a code
            reason = None
        # The service that refused the request names the parameter; else a guess from the reason.
        param = error.param or {"context_length_exceeded": "messages", "model_not_found": "model"}.get(reason or "")
        headers: dict[str, str] = {}
        if isinstance(error, RateLimitError):
            retry_after_s = error.retry_after_s or 0
            headers.update(error.headers)
        if status in (429, 503) and retry_after_s > 0:
            headers["Retry-After"] = str(retry_after_s)
        return cls(status, error.message, type_, reason, param, headers or None)

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError, retry_after_s: int = 0) -> APIError:
        return cls.from_mesh(from_rpc_error(exc), retry_after_s)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, Any]:
        """The same error in Anthropic's shape (same status)."""
        type_ = _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": type_, "message": self.message}}
