"""The running routing policy: routes requests, reloads the config, embeds the agents' examples.

A request reads `self.policy` once and decides on that snapshot, so a reload (which swaps
the reference in one assignment) never changes a decision half-way and drops nothing. A new
config is validated in full before it replaces the old; an invalid one is refused and the old
one keeps running.

The examples are embedded once per config, off the request path: at start-up the inference
service may still be loading, so a background loop keeps trying, and until it succeeds the
content choice rests on the keyword rules. Vectors are cached by text, so a reload embeds only
the examples that are new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import Counter, Histogram

from services.router.catalog import Catalog
from services.router.config import ConfigError, load_config
from services.router.embeddings import FALLBACKS, EmbeddingUnavailableError, RoutingEmbeddings
from services.router.policy import (
    Choice,
    NothingServedError,
    Plan,
    RoutingPolicy,
    UnknownModelError,
    routing_text,
)

log = logging.getLogger(__name__)

DECISIONS = Counter(
    "llmmesh_router_decisions_total", "Routing decisions, by agent and kind of reason.", ["agent", "kind"]
)
DECISION_SECONDS = Histogram(
    "llmmesh_router_decision_seconds",
    "Time spent routing one request, by part: embedding the query, and everything else.",
    ["part"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
RELOADS = Counter("llmmesh_router_config_reloads_total", "Config reloads, by outcome.", ["outcome"])


class LivePolicy:
    def __init__(
        self,
        path: Path,
        policy: RoutingPolicy,
        catalog: Catalog,
        embeddings: RoutingEmbeddings,
        examples_timeout_s: float,
    ) -> None:
        self.path = path
        self.policy = policy
        self._catalog = catalog
        self._embeddings = embeddings
        self._examples_timeout_s = examples_timeout_s
        self._vectors: dict[str, list[float]] = {}
        self._reloading = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def load(
        cls, path: Path, catalog: Catalog, embeddings: RoutingEmbeddings, examples_timeout_s: float = 10.0
    ) -> LivePolicy:
        """Reads and validates the config; ConfigError (naming every problem) if it is invalid."""
        return cls(path, RoutingPolicy(load_config(path)), catalog, embeddings, examples_timeout_s)

    @property
    def served(self) -> tuple[str, ...]:
        return self._catalog.served

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    # ---------------------------------------------------------------- requests

    async def route(self, model: str, agent_override: str, user_turns: Sequence[str]) -> Plan:
        """The plan of one request. UnknownModelError, UnknownAgentError and NothingServedError
        are the client's or the deployment's problem; an unreachable embedding model is not."""
        policy = self.policy
        started = time.perf_counter()
        embedding_s = 0.0
        served = self._catalog.served
        try:
            target = policy.target(model, served)
        except UnknownModelError:
            await self._catalog.refresh_if_older(1.0)  # a model that has just come up
            served = self._catalog.served
            target = policy.target(model, served)
        if agent_override:
            choice = Choice(policy.override(agent_override), "header")
        elif target.kind != "content":
            choice = Choice(target.agent, "pinned" if target.kind == "pinned" else "model")
        else:
            text = routing_text(user_turns, policy.config.routing.user_turns)
            query = None
            if text and policy.semantic_ready:
                embedding_started = time.perf_counter()
                query = await self._embeddings.query(text)
                embedding_s = time.perf_counter() - embedding_started
                if query is not None and not policy.fits(query):
                    self._embedding_model_changed(policy)
                    query = None
            elif text:
                FALLBACKS.labels("examples_pending").inc()
            choice = policy.choose(text, query)
        try:
            plan = policy.plan(target, choice, served)
        except NothingServedError:
            await self._catalog.refresh_if_older(1.0)
            plan = policy.plan(target, choice, self._catalog.served)
        DECISIONS.labels(plan.agent.name, plan.reason.split(":", 1)[0]).inc()
        if embedding_s:
            DECISION_SECONDS.labels("embedding").observe(embedding_s)
        DECISION_SECONDS.labels("decision").observe(time.perf_counter() - started - embedding_s)
        return plan

    def _embedding_model_changed(self, policy: RoutingPolicy) -> None:
        """The query's vector does not fit the examples' (the inference service now runs another
        embedding model): the examples are embedded again, in the background."""
        FALLBACKS.labels("model_changed").inc()
        log.warning("the embedding model changed; embedding the agents' examples again")
        if self.policy is policy:
            self._vectors.clear()
            self.policy = RoutingPolicy(policy.config)

    # ---------------------------------------------------------------- config

    async def reload(self) -> RoutingPolicy:
        """Reads the config file again. Valid: it replaces the running one (with its examples
        embedded if the embedding model answers now, else soon). Invalid: ConfigError, and the
        running config stays."""
        async with self._reloading:
            try:
                config = load_config(self.path)
            except ConfigError as exc:
                RELOADS.labels("rejected").inc()
                log.error("config reload refused; the running config stays", extra={"error": str(exc)})
                raise
            self.policy = RoutingPolicy(config).with_vectors(self._vectors)
            RELOADS.labels("applied").inc()
            await self.embed_examples()
            log.info(
                "config reloaded",
                extra={"agents": [a.name for a in config.agents], "examples_embedded": self.policy.semantic_ready},
            )
            return self.policy

    def reload_in_background(self) -> None:
        """For SIGHUP: the outcome goes to the log."""

        async def reload() -> None:
            with contextlib.suppress(ConfigError):  # logged by reload
                await self.reload()

        task = asyncio.create_task(reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---------------------------------------------------------------- examples

    async def embed_examples(self) -> bool:
        """Embeds what the running policy's examples lack; True once it has every vector."""
        policy = self.policy
        if policy.semantic_ready or not policy.example_texts:
            return True
        missing = [t for t in policy.example_texts if t not in self._vectors]
        if missing:
            try:
                vectors = await self._embeddings.embed(missing, self._examples_timeout_s)
            except EmbeddingUnavailableError as exc:
                log.info("agent examples not embedded yet", extra={"error": str(exc)})
                return False
            self._vectors.update(zip(missing, vectors, strict=True))
        if self.policy is not policy:  # replaced by a reload meanwhile: its examples come next
            return False
        self.policy = policy.with_vectors(self._vectors)
        wanted = set(policy.example_texts)
        self._vectors = {t: v for t, v in self._vectors.items() if t in wanted}
        log.info("agent examples embedded", extra={"examples": len(wanted)})
        return self.policy.semantic_ready

    async def keep_examples_embedded(self, retry_s: float) -> None:
        """Background loop: embeds the examples of whatever config is running, retrying while
        the embedding model is away."""
        while True:
            await self.embed_examples()
            await asyncio.sleep(retry_s)
