"""What vLLM rejects because of the request becomes INVALID_ARGUMENT; anything else stays a bug."""

from __future__ import annotations

import grpc

from services.inference.server import translate_error


def test_a_vllm_validation_error_is_the_clients() -> None:
    from vllm.exceptions import VLLMValidationError

    error = translate_error(VLLMValidationError("grammar cannot take this schema", parameter="response_format"))

    assert error is not None
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("grammar cannot take this schema")


def test_other_errors_are_not_translated() -> None:
    assert translate_error(RuntimeError("boom")) is None
    assert translate_error(ValueError("a library's value error")) is None
