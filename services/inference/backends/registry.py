"""Every model this service answers for, local or external, behind the one Backend interface,
and the walk down a request's candidates.

Model ids: the local engines' model keeps its name; an external backend's model is
``<backend name>/<upstream model>`` (deploy/backends.yaml).

A request names a model and, optionally, candidates to try after it. Each is tried in turn
until one produces its first token (a delta, or the end of an empty answer):
- a failure before that (connection refused, timeout, HTTP 5xx or 429, an upstream silent past
  its ``first_token_timeout_s``, a local engine that died; also HTTP 401/403/404, a backend
  whose key or model list is wrong) moves on to the next, unseen by the client; only then does
  ``Started`` go out, naming the model that answers and those tried;
- a failure after it ends the stream with UNAVAILABLE: the client has text already, and a
  second answer spliced onto it would be wrong;
- a backend with too many failures in a row is skipped while it cools down (cooldown.py);
- when nothing is left: UNAVAILABLE, reason ``backends_unavailable``, naming the backends tried
  and why (names only: no URL, no key). The gateway answers it as a 503.
The request's own faults (a bad parameter, a prompt too long) end the walk at once: another
backend would not make them right. The requested model must honour every parameter (else a
400 naming it); a later candidate that cannot is skipped.

Cancelling the consumer closes the current attempt's generator, which closes its upstream
HTTP stream (or aborts the local engine request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
from prometheus_client import Counter

from services.common.errors import InvalidArgumentError, MeshError
from services.inference.backends.base import BackendUnavailableError, ExternalBackend, approx_tokens
from services.inference.backends.config import LOCAL, BackendConfig
from services.inference.backends.cooldown import Cooldowns
from services.inference.domain import (
    Backend,
    Event,
    GenerationJob,
    LoadFigures,
    PromptLimits,
    Started,
    unknown_model_error,
)

log = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "llmmesh_inference_backend_attempts_total",
    "Generation attempts by backend and outcome: ok (answering), failed (before the first token: the next "
    "candidate is tried), failed_mid_stream (the stream ends with an error), cooling (skipped, cooling down).",
    ["backend", "outcome"],
)
FALLBACKS = Counter(
    "llmmesh_inference_fallbacks_total",
    "Requests answered by a later candidate because those before it failed or were cooling down, by the backend "
    "that answered.",
    ["backend"],
)
COOLDOWNS = Counter(
    "llmmesh_inference_backend_cooldowns_total",
    "Times a backend was put to cool down after too many failures in a row.",
    ["backend"],
)
EXHAUSTED = Counter(
    "llmmesh_inference_candidates_exhausted_total", "Requests that no candidate could answer (a 503 to the client)."
)


@dataclass(frozen=True)
class ModelEntry:
    """A model as ListModels shows it."""

    id: str
    backend: str
    kind: str
    context_length: int
    source: str
    engines: int
    # When it became servable (Unix seconds): the registry is built once the local model is
    # loaded and the backends' configuration read.
    created: int = 0


@dataclass(frozen=True)
class _Target:
    model: str  # the id it is served under
    backend: str
    upstream: str = ""
    external: ExternalBackend | None = None

    @property
    def first_token_timeout_s(self) -> float | None:
        return self.external.config.first_token_timeout_s if self.external else None


def external_backend(config: BackendConfig, limits: PromptLimits) -> ExternalBackend:
    """A client of the configured backend (its key read now)."""
    if config.kind == "anthropic":
        from services.inference.backends.anthropic import AnthropicBackend

        return AnthropicBackend(config, limits)
    from services.inference.backends.openai_compat import OpenAICompatBackend

    return OpenAICompatBackend(config, limits)


def local_kind(backend: Backend) -> str:
    return backend.kind


def _unavailable(exc: Exception) -> BackendUnavailableError | None:
    """The failure as a backend being down (an external one's, or vLLM's engine process that died
    or cannot take requests); None: the request's own fault, or a bug."""
    if isinstance(exc, BackendUnavailableError):
        return exc
    if type(exc).__module__.startswith("vllm") and type(exc).__name__ in ("EngineDeadError", "EngineGenerateError"):
        return BackendUnavailableError(LOCAL, "engine down")
    return None


async def _close(events: AsyncIterator[Event]) -> None:
    """Ends an attempt: an async generator's close runs its cleanup (closing the upstream stream,
    aborting the engine request)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


class BackendRegistry:
    """A Backend (domain.py) over the local one and the external ones, by model id."""

    def __init__(self, local: Backend, local_kind: str, externals: list[ExternalBackend], cooldowns: Cooldowns) -> None:
        self.local = local
        self.local_kind = local_kind
        self.created = int(time.time())
        self.model_name = local.model_name
        self.externals = externals
        self.cooldowns = cooldowns
        self._targets: dict[str, _Target] = {local.model_name: _Target(local.model_name, LOCAL)}
        for backend in externals:
            for upstream in backend.config.models:
                model = f"{backend.name}/{upstream}"
                self._targets[model] = _Target(model, backend.name, upstream, backend)

    # The Backend protocol: the local model's figures; generation by model id.
    @property
    def kind(self) -> str:
        return self.local_kind

    @property
    def source(self) -> str:
        return self.local.source

    @property
    def engine_count(self) -> int:
        return self.local.engine_count

    @property
    def context_length(self) -> int:
        return self.local.context_length

    def load(self) -> list[LoadFigures]:
        return self.local.load()

    def generating(self) -> bool:
        """A request is in flight on a local engine (what background work steps aside for)."""
        return any(figures.outstanding for figures in self.local.load())

    def shutdown(self) -> None:
        self.local.shutdown()

    def models(self) -> list[ModelEntry]:
        entries = [
            ModelEntry(
                self.local.model_name,
                LOCAL,
                self.local_kind,
                self.context_length,
                self.source,
                self.engine_count,
                self.created,
            )
        ]
        for backend in self.externals:
            config = backend.config
            entries += [
                ModelEntry(model, config.name, config.kind, config.context_length, config.name, 0, self.created)
                for model in config.model_ids()
            ]
        return entries

    def context_length_of(self, model: str) -> int:
        target = self._targets.get(model)
        if target is None:
            raise unknown_model_error(model)
        return target.external.config.context_length if target.external else self.context_length

    async def count_tokens(self, model: str, messages: list[dict[str, Any]]) -> int:
        """The local model's exact count; an external model's estimate (base.approx_tokens)."""
        target = self._targets.get(model)
        if target is None:
            raise unknown_model_error(model)
        if target.external is None:
            return await self.local.count_tokens(model, messages)
        return approx_tokens(messages)

    def _chain(self, job: GenerationJob) -> list[_Target]:
        """The targets to try in order: the requested model (which must honour the request),
        then the candidates that exist and can."""
        first = self._targets.get(job.model)
        if first is None:
            raise unknown_model_error(job.model)
        if first.external is not None:
            first.external.check(job)
        chain = [first]
        for model in dict.fromkeys(job.candidates):
            target = self._targets.get(model)
            if target is None:
                log.warning("unknown candidate model skipped", extra={"model": model})
            elif target not in chain:
                try:
                    if target.external is not None:
                        target.external.check(job)
                    chain.append(target)
                except InvalidArgumentError as exc:
                    log.info("candidate cannot honour the request, skipped", extra={"model": model, "why": exc.message})
        return chain

    def _attempt(self, target: _Target, job: GenerationJob) -> AsyncIterator[Event]:
        # Each attempt gets its own copy: the local pool writes tool-call constraints into it.
        own = replace(job, model=target.model, sampling=replace(job.sampling))
        if target.external is not None:
            return target.external.generate(own, target.upstream)
        return self.local.generate(own)

    @staticmethod
    async def _until_first_token(target: _Target, events: AsyncIterator[Event]) -> tuple[Started, list[Event]]:
        """The attempt's Started and its first event after it (a delta or an end)."""
        head: Started | None = None
        timeout = target.first_token_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    if isinstance(event, Started):
                        head = event
                        continue
                    if head is None:
                        break
                    return head, [event]
        except TimeoutError:
            raise BackendUnavailableError(target.backend, f"no first token within {timeout:g} s") from None
        raise BackendUnavailableError(target.backend, "the stream ended before it started")

    def _failed(self, target: _Target, reason: str, outcome: str = "failed") -> None:
        ATTEMPTS.labels(target.backend, outcome).inc()
        log.warning("backend attempt failed", extra={"model": target.model, "backend": target.backend, "why": reason})
        if self.cooldowns.failed(target.backend):
            COOLDOWNS.labels(target.backend).inc()
            log.warning(
                "backend cooling down",
                extra={"backend": target.backend, "cooldown_s": self.cooldowns.cooldown_s},
            )

    async def generate(self, job: GenerationJob) -> AsyncGenerator[Event, None]:
        tried: list[str] = []
        why: list[str] = []
        for target in self._chain(job):
            if self.cooldowns.cooling(target.backend):
                ATTEMPTS.labels(target.backend, "cooling").inc()
                log.info("backend skipped while cooling down", extra={"model": target.model, "backend": target.backend})
                tried.append(target.model)
                why.append(f"{target.backend} (cooling down)")
                continue
            events = self._attempt(target, job)
            try:
                head, first = await self._until_first_token(target, events)
            except Exception as exc:
                await _close(events)
                down = _unavailable(exc)
                if down is None:
                    raise
                self._failed(target, down.reason)
                tried.append(target.model)
                why.append(f"{target.backend} ({down.reason})")
                continue
            except BaseException:  # cancelled
                await _close(events)
                raise
            self.cooldowns.succeeded(target.backend)
            ATTEMPTS.labels(target.backend, "ok").inc()
            if tried:
                FALLBACKS.labels(target.backend).inc()
            log.info("backend answering", extra={"model": target.model, "backend": target.backend, "tried": tried})
            try:
                yield replace(head, backend_model=target.model, tried=list(tried))
                for event in first:
                    yield event
                async for event in events:
                    yield event
            except Exception as exc:
                down = _unavailable(exc)
                if down is None:
                    raise
                self._failed(target, down.reason, "failed_mid_stream")
                raise MeshError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the backend `{target.backend}` failed after the answer had started ({down.reason})",
                    "backend_failed",
                ) from None
            finally:
                await _close(events)  # closes the upstream stream if the consumer stopped early
            return
        EXHAUSTED.inc()
        log.warning("no candidate could answer", extra={"tried": why})
        raise MeshError(
            grpc.StatusCode.UNAVAILABLE,
            f"No backend could answer the request; tried: {', '.join(why)}.",
            "backends_unavailable",
        )
