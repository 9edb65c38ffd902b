"""APIError: the one mapping from mesh errors (gRPC status, reason, param) to OpenAI's error shape."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import MeshError
from services.gateway.errors import APIError


def test_not_found_model_is_404_model_not_found_on_model() -> None:
    error = APIError.from_mesh(MeshError(grpc.StatusCode.NOT_FOUND, "The model `x` does not exist.", "model_not_found"))

    assert error.status == 404
    assert error.type == "invalid_request_error"
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert error.message == "The model `x` does not exist."


def test_context_length_exceeded_is_400_on_messages() -> None:
    error = APIError.from_mesh(MeshError(grpc.StatusCode.INVALID_ARGUMENT, "too long", "context_length_exceeded"))

    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )


def test_the_param_named_by_the_service_wins_over_the_guess() -> None:
    error = APIError.from_mesh(
        MeshError(grpc.StatusCode.INVALID_ARGUMENT, "too long", "context_length_exceeded", param="tools")
    )

    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "tools")


def test_invalid_request_error_reason_is_a_type_not_a_code() -> None:
    error = APIError.from_mesh(MeshError(grpc.StatusCode.INVALID_ARGUMENT, "bad", "invalid_request_error"))

    assert (error.status, error.type, error.code, error.param) == (400, "invalid_request_error", None, None)


def test_unavailable_is_503() -> None:
    error = APIError.from_mesh(MeshError(grpc.StatusCode.UNAVAILABLE, "connection refused"))

    assert (error.status, error.type, error.code, error.param) == (503, "service_unavailable", None, None)


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.ABORTED]
)
def test_unmapped_status_is_500_server_error(code: grpc.StatusCode) -> None:
    error = APIError.from_mesh(MeshError(code, "boom"))

    assert (error.status, error.type, error.code, error.param) == (500, "server_error", None, None)


@pytest.mark.parametrize(
    ("code", "status", "type_"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout"),
        (grpc.StatusCode.CANCELLED, 499, "request_cancelled"),
    ],
)
def test_other_mapped_statuses(code: grpc.StatusCode, status: int, type_: str) -> None:
    error = APIError.from_mesh(MeshError(code, "x"))

    assert (error.status, error.type) == (status, type_)


def test_unknown_reason_is_passed_as_code_without_param() -> None:
    error = APIError.from_mesh(MeshError(grpc.StatusCode.FAILED_PRECONDITION, "x", "session_locked"))

    assert (error.status, error.code, error.param) == (400, "session_locked", None)


def test_body_is_openai_error_shape() -> None:
    error = APIError.invalid("at most 4 stop sequences are allowed", "stop")

    assert error.body() == {
        "error": {
            "message": "at most 4 stop sequences are allowed",
            "type": "invalid_request_error",
            "param": "stop",
            "code": None,
        }
    }
