"""The routing policy: which agent answers a request and which models may serve it.

Pure and immutable: one RoutingPolicy per config (with its agents' example vectors once they
are embedded), no I/O. The caller brings the query's embedding and the models being served,
so a decision costs a few vector products and a regex per agent.

Public model names:
  `llmmesh`          the agent is chosen from the content (header > semantic + keywords > default);
  `llmmesh-<agent>`  that agent, on its candidate chain;
  a served model id  that model alone, with the default agent (the header may name another).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from services.router.config import LOCAL, Agent, RouterConfig

PUBLIC = "llmmesh"
PINNED_PREFIX = f"{PUBLIC}-"

Vector = npt.NDArray[np.float32]


class UnknownModelError(LookupError):
    """The requested model is no public name."""


class UnknownAgentError(LookupError):
    """The override header names no agent."""


class NothingServedError(LookupError):
    """None of the agent's candidates is served right now."""

    def __init__(self, agent: str, chain: Sequence[str]) -> None:
        super().__init__(agent, tuple(chain))
        self.agent = agent
        self.chain = tuple(chain)


def is_local(model_id: str) -> bool:
    """Local engines serve plain ids; other backends serve `<backend>/<model>`."""
    return "/" not in model_id


def routing_text(user_turns: Sequence[str], turns: int) -> str:
    """The latest `turns` user turns, newest first: the embedding model reads a bounded number
    of tokens and cuts the rest, so the newest turn must come first to be read whole."""
    latest = [t.strip() for t in reversed(user_turns) if t.strip()][:turns]
    return "\n".join(latest)


@dataclass(frozen=True)
class ExampleVectors:
    """The agents' example embeddings (unit length), grouped by agent, plus one centroid each."""

    agents: tuple[str, ...]
    matrix: Vector  # one row per example, the rows of agents[i] from starts[i]
    starts: npt.NDArray[np.intp]
    centroids: Vector  # one unit row per agent

    @classmethod
    def build(cls, config: RouterConfig, vectors: Mapping[str, Sequence[float]]) -> ExampleVectors | None:
        """From text -> vector; None when an example is missing or no agent has examples."""
        agents = [a for a in config.agents if a.examples]
        if not agents or any(e not in vectors for a in agents for e in a.examples):
            return None
        blocks = [np.asarray([vectors[e] for e in a.examples], dtype=np.float32) for a in agents]
        centroids = np.stack([block.mean(axis=0) for block in blocks])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        starts = np.cumsum([0, *(len(block) for block in blocks[:-1])]).astype(np.intp)
        return cls(tuple(a.name for a in agents), np.concatenate(blocks), starts, centroids.astype(np.float32))

    @property
    def dimensions(self) -> int:
        return int(self.matrix.shape[1])

    def similarities(self, query: Vector, scoring: Literal["max", "centroid"]) -> dict[str, float]:
        """Cosine similarity of the query to each agent (its closest example, or its centroid)."""
        if scoring == "centroid":
            scores = self.centroids @ query
        else:
            scores = np.maximum.reduceat(self.matrix @ query, self.starts)
        return dict(zip(self.agents, scores.tolist(), strict=True))


class KeywordRules:
    """Each agent's keywords as one case-insensitive whole-word (or whole-phrase) pattern."""

    def __init__(self, agents: Sequence[Agent]) -> None:
        self._patterns = [
            (a.name, re.compile(r"(?<!\w)(" + "|".join(map(re.escape, a.keywords)) + r")(?!\w)", re.IGNORECASE))
            for a in agents
            if a.keywords
        ]

    def hits(self, text: str) -> dict[str, str]:
        """Agent -> the first of its keywords found in the text."""
        found: dict[str, str] = {}
        for name, pattern in self._patterns:
            match = pattern.search(text)
            if match is not None:
                found[name] = match.group(1).lower()
        return found


@dataclass(frozen=True)
class Choice:
    agent: Agent
    reason: str


@dataclass(frozen=True)
class Plan:
    """Who answers and on what, in order of preference."""

    agent: Agent
    candidates: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Target:
    """What the model name asks for: the content to choose (`llmmesh`), an agent (`pinned`), or
    one served model (`model`)."""

    kind: Literal["content", "pinned", "model"]
    agent: Agent
    model: str = ""


@dataclass(frozen=True)
class PublicModel:
    id: str
    owned_by: str
    backend_model: str
    agent: str
    description: str


class RoutingPolicy:
    def __init__(self, config: RouterConfig, vectors: ExampleVectors | None = None) -> None:
        self.config = config
        self.vectors = vectors
        self._rules = KeywordRules(config.agents)

    def with_vectors(self, vectors: Mapping[str, Sequence[float]]) -> RoutingPolicy:
        """The same policy with its examples' vectors (from text -> vector)."""
        return RoutingPolicy(self.config, ExampleVectors.build(self.config, vectors))

    @property
    def example_texts(self) -> list[str]:
        return sorted({e for a in self.config.agents for e in a.examples})

    @property
    def semantic_ready(self) -> bool:
        """Examples are embedded (else content choice uses the keyword rules alone)."""
        return self.vectors is not None

    def fits(self, query: Vector) -> bool:
        """The query comes from the model the examples were embedded with (same size)."""
        return self.vectors is not None and query.shape == (self.vectors.dimensions,)

    # ---------------------------------------------------------------- the model name

    def target(self, model: str, served: Sequence[str]) -> Target:
        config = self.config
        if model == PUBLIC:
            return Target("content", config.default)
        if model.startswith(PINNED_PREFIX):
            agent = config.agent(model.removeprefix(PINNED_PREFIX))
            if agent is not None:
                return Target("pinned", agent)
        if model in served:
            return Target("model", config.default, model)
        raise UnknownModelError(model)

    def override(self, name: str) -> Agent:
        agent = self.config.agent(name)
        if agent is None:
            raise UnknownAgentError(name)
        return agent

    # ---------------------------------------------------------------- the content

    def choose(self, text: str, query: Vector | None) -> Choice:
        """The agent for this text: the best score, where a score is the similarity to the
        agent's examples, plus a bonus for a keyword hit (which alone clears the threshold, so an
        agent with keywords and no examples can win too). Below the threshold the default agent
        answers. Without a query vector (the embedding model is away, or the examples are not
        embedded yet) the first agent with a keyword hit answers, else the default agent."""
        config = self.config
        hits = self._rules.hits(text) if text else {}
        if query is None or self.vectors is None or not self.fits(query):
            for agent in config.agents:
                if agent.name in hits:
                    return Choice(agent, f"keyword:{hits[agent.name]}")
            return Choice(config.default, "default")
        routing = config.routing
        similarity = self.vectors.similarities(query, routing.scoring)
        scores = {a.name: similarity.get(a.name, 0.0) for a in config.agents}
        for name in hits:
            scores[name] = max(scores[name] + routing.keyword_bonus, routing.threshold)
        best = max(scores, key=lambda name: scores[name])  # ties: the first in config order
        if scores[best] < routing.threshold:
            return Choice(config.default, "default")
        chosen = config.agent(best)
        assert chosen is not None
        reason = f"keyword:{hits[best]}" if best in hits else f"semantic:{similarity.get(best, 0.0):.2f}"
        return Choice(chosen, reason)

    # ---------------------------------------------------------------- the plan

    def plan(self, target: Target, choice: Choice, served: Sequence[str]) -> Plan:
        """The agent chosen and the models to try: the one asked for, or the agent's chain."""
        if target.kind == "model":
            return Plan(choice.agent, (target.model,), choice.reason)
        candidates = self.candidates(choice.agent, served)
        if not candidates:
            raise NothingServedError(choice.agent.name, choice.agent.candidates)
        return Plan(choice.agent, candidates, choice.reason)

    @staticmethod
    def candidates(agent: Agent, served: Sequence[str]) -> tuple[str, ...]:
        """The agent's chain with `local` resolved, keeping only models served right now."""
        out: list[str] = []
        first_local = next((m for m in served if is_local(m)), None)
        for entry in agent.candidates:
            model = first_local if entry == LOCAL else entry
            if model is not None and model in served and model not in out:
                out.append(model)
        return tuple(out)

    def public_models(self, served: Sequence[str]) -> list[PublicModel]:
        """Every name a client may use now: a name is listed while something can serve it."""
        config = self.config
        listed: list[PublicModel] = []
        default_chain = self.candidates(config.default, served)
        if default_chain:
            listed.append(
                PublicModel(PUBLIC, PUBLIC, default_chain[0], "", "Chooses the agent from each request's content.")
            )
        for agent in config.agents:
            chain = self.candidates(agent, served)
            if chain:
                listed.append(
                    PublicModel(f"{PINNED_PREFIX}{agent.name}", PUBLIC, chain[0], agent.name, agent.description)
                )
        for model in served:
            owner = PUBLIC if is_local(model) else model.split("/", 1)[0]
            listed.append(PublicModel(model, owner, model, config.default_agent, f"The model {model}."))
        return listed
