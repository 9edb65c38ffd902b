"""Fuzzing the public REST API of the running stack.

schemathesis generates requests from the stack's own OpenAPI document (read through Envoy) for
every operation in it: requests that fit the schema and requests that break it. They go out
with a valid API key, and mostly with a valid model name (else nearly every request would stop
at `model_not_found`), so they reach the real pipeline. The answer to every one must be below
500 and, when it is an error, in OpenAI's shape (Anthropic's on /v1/messages*); every process
of the stack must still run at the end. The counts by status are printed.

Every service and hop is real: Envoy, the gateway, the router, the memory service with its
Redis-protocol server and embedded Qdrant, the inference service with its embedding model. Only
token generation is instant (`LLMMESH_INFERENCE_BACKEND=instant`): on a CPU the real model
would need hours for a thousand requests whose `max_tokens` the fuzzer picks, and what is under
test is how the mesh handles requests, not the model's text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.core.result import Ok

from services.stack.launcher import RunningStack, background_stack
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration

PORT_OFFSET = 14000  # its own stack, clear of the suite's shared one and of ephemeral ports (see conftest)
EMBEDDING_MODEL = "all-minilm-l6-v2"
MIN_REQUESTS = 1000
# Generated examples per operation and mode in one pass over the API, twice as many for a POST
# (the bodies that reach the pipeline); a pass is about 1,500 requests today. Passes repeat
# until MIN_REQUESTS are sent.
EXAMPLES = 50
MAX_PASSES = 5
SESSION_ID = "fuzz-session"
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def instant_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    env = {"LLMMESH_INFERENCE_BACKEND": "instant"}
    env |= {f"LLMMESH_{svc}_LOG_LEVEL": "WARNING" for svc in ("GATEWAY", "MEMORY", "ROUTER", "INFERENCE")}
    with background_stack(tmp_path_factory.mktemp("fuzz-stack"), PORT_OFFSET, env) as running:
        yield running
    assert not running.leftovers, f"processes left running after Ctrl-C: {running.leftovers}\n{running.log_tail()}"


def _processes(stack: RunningStack) -> dict[int, str]:
    """pid -> command line of the runner and everything it started."""
    runner = psutil.Process(stack.pid)
    return {p.pid: " ".join(p.cmdline()[:4]) for p in [runner, *runner.children(recursive=True)]}


def _logged_errors(stack: RunningStack, most: int = 5) -> str:
    """The last errors the services logged, each cut to its start and its end (where a traceback
    names the exception); the access log of thousands of requests is no help."""
    lines = [line for line in stack.log.read_text(errors="replace").splitlines() if '"level": "ERROR"' in line]
    return "\n".join(f"{line[:200]} ... {line[-800:]}" if len(line) > 1000 else line for line in lines[-most:])


def _anthropic_error_shape(payload: Any) -> str | None:
    """What is wrong with an error body of the Messages API; None when it is Anthropic's shape."""
    if not isinstance(payload, dict) or set(payload) != {"type", "error"} or payload["type"] != "error":
        return "not {'type': 'error', 'error': {...}}"
    error = payload["error"]
    if not isinstance(error, dict) or set(error) != {"type", "message"}:
        return "error fields are not ['message', 'type']"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return "message or type is not a non-empty string"
    return None


def _error_shape(payload: Any) -> str | None:
    """What is wrong with an error body; None when it is OpenAI's shape."""
    if not isinstance(payload, dict) or set(payload) != {"error"}:
        return "not {'error': {...}}"
    error = payload["error"]
    if not isinstance(error, dict) or set(error) != ERROR_FIELDS:
        return f"error fields are not {sorted(ERROR_FIELDS)}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return "message or type is not a non-empty string"
    return None


def _stream_errors(text: str) -> Iterator[Any]:
    """The error events of an SSE body."""
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            with_error = json.loads(line[len("data: ") :])
            if isinstance(with_error, dict) and "error" in with_error:
                yield with_error


@dataclass
class Fuzz:
    base_url: str
    auth: dict[str, str] = field(repr=False)
    http: requests.Session = field(default_factory=requests.Session, repr=False)
    by_status: Counter[int] = field(default_factory=Counter)
    by_operation: dict[str, Counter[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.by_status.values())

    def fill(self, case: Case[Any], data: st.DataObject) -> None:
        """Mostly valid model names (the embedding model for embeddings), sometimes a known session."""
        if isinstance(case.body, dict) and "model" in case.body and data.draw(st.integers(0, 9)) < 8:
            case.body["model"] = EMBEDDING_MODEL if case.operation.path == "/v1/embeddings" else MODEL
        if "model_id" in case.path_parameters and data.draw(st.booleans()):
            case.path_parameters["model_id"] = data.draw(st.sampled_from([MODEL, EMBEDDING_MODEL]))
        if "session_id" in case.path_parameters and data.draw(st.booleans()):
            case.path_parameters["session_id"] = SESSION_ID

    def send(self, case: Case[Any], mode: GenerationMode) -> None:
        response = case.call(base_url=self.base_url, session=self.http, headers=self.auth, timeout=60)
        operation = f"{case.operation.method.upper()} {case.operation.path}"
        self.by_status[response.status_code] += 1
        self.by_operation.setdefault(operation, Counter())[response.status_code] += 1
        wrong = None
        shape = _anthropic_error_shape if case.operation.path.startswith("/v1/messages") else _error_shape
        if response.status_code >= 500:
            wrong = "a 5xx"
        elif response.status_code >= 400:
            try:
                wrong = shape(json.loads(response.content))
            except ValueError:
                wrong = "not JSON"
        elif any(k.lower() == "content-type" and "text/event-stream" in str(v) for k, v in response.headers.items()):
            wrong = next(filter(None, map(shape, _stream_errors(response.content.decode()))), None)
        if wrong:
            sent: dict[str, Any] = {
                "path": case.path_parameters,
                "query": case.query,
                "headers": dict(case.headers or {}),
            }
            if isinstance(case.body, dict | list | str):
                sent["body"] = case.body
            self.problems.append(
                f"{operation} ({mode.value}) -> {response.status_code}, {wrong}: "
                f"{response.content[:300]!r}\n    request: {json.dumps(sent, default=repr)[:800]}"
            )

    def run(self, operation: APIOperation[Any, Any, Any, Any], mode: GenerationMode, examples: int) -> None:
        @given(case=operation.as_strategy(mode), data=st.data())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # every failure is collected, none is shrunk
            suppress_health_check=list(HealthCheck),
        )
        def one(case: Case[Any], data: st.DataObject) -> None:
            self.fill(case, data)
            self.send(case, mode)

        try:
            one()
        except Unsatisfiable:  # nothing in the request can break the schema (no body, no query)
            assert mode == GenerationMode.NEGATIVE

    def summary(self) -> str:
        def counts(by_status: Counter[int]) -> str:
            return ", ".join(f"{status}: {n}" for status, n in sorted(by_status.items()))

        lines = [f"fuzz: {self.sent} requests; by status {counts(self.by_status)}; problems {len(self.problems)}"]
        for operation, by_status in sorted(self.by_operation.items()):
            lines.append(f"  {sum(by_status.values()):5d}  {operation}  ({counts(by_status)})")
        return "\n".join(lines)


def test_fuzzed_requests_get_no_5xx_and_only_openai_errors(
    instant_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = instant_stack
    before = _processes(stack)
    schema = schemathesis.openapi.from_url(f"{stack.settings.public_url}/openapi.json")
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    fuzz = Fuzz(stack.settings.public_url, stack.auth)
    created = fuzz.http.post(f"{stack.base_url}/sessions", json={"id": SESSION_ID}, headers=stack.auth, timeout=30)
    assert created.status_code == 200, created.text

    for _ in range(MAX_PASSES):
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz.run(operation, mode, EXAMPLES * (2 if operation.method.lower() == "post" else 1))
        if fuzz.sent >= MIN_REQUESTS:
            break

    after = _processes(stack)
    with capsys.disabled():
        print(f"\n{fuzz.summary()}")
    assert fuzz.sent >= MIN_REQUESTS
    assert not fuzz.problems, "\n".join(fuzz.problems[:10]) + f"\nerrors logged:\n{_logged_errors(stack)}"
    gone = {pid: cmd for pid, cmd in before.items() if pid not in after}
    assert not gone, f"processes that died during the fuzz run: {gone}\n{_logged_errors(stack)}"
    assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in after)
