"""What every external backend shares: the failure that lets the registry try the next
candidate, the mapping of an upstream HTTP status to it or to the client's error, and the
prompt an external model gets.

Token counts. An external model's tokenizer is not here, so nothing is counted exactly:
- prompts are estimated at one token per 3 characters of content plus 4 per message
  (``approx_tokens``; English text runs nearer 4 characters a token, so this errs high);
- server-held history is trimmed with that estimate only when the backend's configured
  ``context_length`` is set (the same trimming as the local engines, context.py); else it is
  sent whole and an over-long prompt is the upstream's 400, answered as the client's error;
- ``Started.prompt_tokens`` is that estimate; the usage at the end is the upstream's own,
  or the estimate (and one token per streamed chunk) when the upstream reports none.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from types import ModuleType
from typing import Any

from services.common.errors import InvalidArgumentError
from services.inference.backends.config import BackendConfig
from services.inference.context import FittedPrompt
from services.inference.domain import Event, GenerationJob, PromptLimits, fit_job

# Upstream answers that say "not now, or not here" rather than "not this request": the next
# candidate may serve it. 401/403/404 are a backend's configuration (its key, its model list)
# failing, which the client cannot fix either.
FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


class BackendUnavailableError(Exception):
    """A backend could not serve the request (down, overloaded, rate limited, timed out).
    `reason` is short and safe to show: never a URL or a key."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason


def status_error(backend: str, status: int, message: str, param: str | None = None) -> Exception:
    """An upstream HTTP error status: the client's error (4xx, naming the upstream's `param`) or a
    reason to fall back."""
    if status >= 500 or status in FALLBACK_STATUSES:
        return BackendUnavailableError(backend, "rate limited (429)" if status == 429 else f"HTTP {status}")
    too_long = any(words in message.lower() for words in ("context length", "max_model_len", "context window"))
    reason = "context_length_exceeded" if too_long else ""
    return InvalidArgumentError(f"the backend `{backend}` refused the request: {message}", param, reason)


def _body_field(body: object, name: str) -> str:
    """A field of an error body, OpenAI's ({"message", "param"} or {"error": {...}}) or Anthropic's."""
    if not isinstance(body, dict):
        return ""
    inner = body.get("error")
    value = body.get(name) or (inner.get(name) if isinstance(inner, dict) else None)
    return value if isinstance(value, str) else ""


def sdk_error(backend: str, exc: Exception, sdk: ModuleType) -> Exception:
    """An error of the `openai` or `anthropic` SDK (they share their exception classes' names) as
    the client's error or a reason to fall back. Messages never carry a URL."""
    if isinstance(exc, sdk.APIStatusError):
        message = _body_field(exc.body, "message") or exc.message
        return status_error(backend, exc.status_code, message, _body_field(exc.body, "param") or None)
    if isinstance(exc, sdk.APITimeoutError):
        return BackendUnavailableError(backend, "timed out")
    if isinstance(exc, sdk.APIConnectionError):
        return BackendUnavailableError(backend, "connection failed")
    return BackendUnavailableError(backend, "upstream error")  # e.g. an error event inside the stream


def approx_tokens(messages: list[dict[str, Any]]) -> int:
    """An estimate that errs high (see the module doc)."""
    return sum(4 + math.ceil(len(str(m.get("content") or "")) / 3) for m in messages)


def fit_messages(job: GenerationJob, context_length: int, limits: PromptLimits) -> FittedPrompt:
    """The messages an external model gets: the job's, with history and memories placed as for
    the local engines, trimmed by estimate when the context length is known. `ids` is empty."""
    length = context_length or 1 << 40  # unknown: everything fits

    def encode(chat: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        return [0] * approx_tokens(chat)

    fitted = fit_job(job, encode, lambda text: math.ceil(len(text) / 3), length, limits)
    return FittedPrompt([], fitted.messages, fitted.dropped_turns, fitted.memories_used)


def refuse(param: str, backend: BackendConfig, what: str = "") -> InvalidArgumentError:
    return InvalidArgumentError(
        f"`{param}` is not supported by the model's backend `{backend.name}` ({backend.kind}){what}", param
    )


def check_common(job: GenerationJob, backend: BackendConfig) -> None:
    """What no external backend can honour: llmmesh's local-tokenizer parameters (refused when
    the client asked for them, left out when they are an agent's defaults)."""
    if job.raw_prompt:
        raise refuse("prompt", backend, ": the completions API is served by local models only")
    if job.asked("logit_bias"):
        raise refuse("logit_bias", backend, ": token ids are the local tokenizer's")
    for name in ("top_k", "min_p", "repetition_penalty", "ignore_eos"):
        if job.asked(name):
            raise refuse(name, backend)


class ExternalBackend:
    """One configured backend: a client of its API and the models it serves."""

    def __init__(self, config: BackendConfig, limits: PromptLimits) -> None:
        self.config = config
        self.limits = limits

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.kind

    def check(self, job: GenerationJob) -> None:
        """Raises InvalidArgumentError for a parameter this backend cannot honour."""
        check_common(job, self.config)

    def generate(self, job: GenerationJob, upstream_model: str) -> AsyncGenerator[Event, None]:
        """Started (once the upstream has accepted the request), deltas, ChoiceEnds, End.
        Raises BackendUnavailableError for a failure another backend may not have."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def fit(self, job: GenerationJob) -> FittedPrompt:
        return fit_messages(job, self.config.context_length, self.limits)
