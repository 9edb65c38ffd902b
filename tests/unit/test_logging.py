"""JsonFormatter: one JSON object per line with service, level, message, request id and extras."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.context import request_id_var
from services.common.logging import JsonFormatter


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("memory"))
    logger = logging.getLogger(f"tests.unit.logging.{uuid.uuid4().hex}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    out = stream.getvalue().splitlines()
    parsed = [json.loads(line) for line in out]
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def test_line_is_one_json_object_with_the_standard_fields(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture

    logger.warning("hello %s", "world")

    (line,) = lines(stream)
    assert line["service"] == "memory"
    assert line["level"] == "WARNING"
    assert line["msg"] == "hello world"
    assert line["logger"] == logger.name
    assert line["request_id"] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert set(line) == {"ts", "level", "service", "logger", "request_id", "msg"}


def test_line_carries_the_current_request_id(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    token = request_id_var.set("req-log-1")
    try:
        logger.info("inside")
    finally:
        request_id_var.reset(token)
    logger.info("outside")

    inside, outside = lines(stream)
    assert inside["request_id"] == "req-log-1"
    assert outside["request_id"] == "-"


def test_extra_fields_become_their_own_keys(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture

    logger.info(
        "serving", extra={"address": "127.0.0.1:8103", "services": ["a", "b"], "port": 8103, "path": Path("/x")}
    )

    (line,) = lines(stream)
    assert line["address"] == "127.0.0.1:8103"
    assert line["services"] == ["a", "b"]
    assert line["port"] == 8103
    assert line["path"] == "/x"  # not JSON-native: stringified
    assert line["msg"] == "serving"


def test_extra_cannot_override_the_standard_fields(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture

    logger.info("x", extra={"service": "spoofed", "level": "spoofed"})

    (line,) = lines(stream)
    assert (line["service"], line["level"]) == ("memory", "INFO")


def test_exception_is_one_line_with_the_traceback(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture

    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logger.exception("failed")

    assert len(stream.getvalue().splitlines()) == 1
    (line,) = lines(stream)
    assert line["level"] == "ERROR"
    assert "Traceback" in line["exc"]
    assert "RuntimeError: kaput" in line["exc"]
    assert "exc_info" not in line
