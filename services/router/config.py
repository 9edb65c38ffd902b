"""The router's configuration (deploy/router.yaml): the agents and how one is chosen.

Validated as a whole when it is read, at start-up and on every reload: a typo must stop the
router with a message naming the field (or be refused by a reload), never become a 400 on
each request. Which models exist is not known here (the inference service says that at run
time), so a candidate chain is checked for its form only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

INT32_MAX = 2**31 - 1
# The first local model the inference service serves, whatever its name.
LOCAL = "local"
# A public name is `llmmesh-<agent>`, so an agent name is what a model name may carry.
AGENT_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
# A model id as the inference service lists it: `<model>` (local) or `<backend>/<model>`.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*(?:/[A-Za-z0-9._:@/-]+)?$")

MemoryPolicy = Literal["stateless", "history", "history+recall"]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class ConfigError(Exception):
    """The config file cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Retrieval(_Strict):
    """Passages of a knowledge collection added to the agent's system prompt."""

    enabled: bool = False
    collection: str = ""
    max_tokens: int = Field(default=512, ge=1, le=INT32_MAX)

    @model_validator(mode="after")
    def _collection_when_enabled(self) -> Retrieval:
        if self.enabled and not self.collection.strip():
            raise ValueError("retrieval is enabled but names no collection")
        return self


class SamplingDefaults(_Strict):
    """Sampling values for the agent; the client's own values win. Ranges are OpenAI's (and
    vLLM's for its extras), so a default can never be what turns a request into a 400."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: list[NonEmpty] = Field(default_factory=list, max_length=4)

    def values(self) -> dict[str, Any]:
        """The values set, by SamplingParams field name."""
        return self.model_dump(exclude_none=True, exclude_defaults=True)


class Agent(_Strict):
    name: str = Field(pattern=AGENT_NAME)
    description: NonEmpty
    # Utterances this agent should answer: the semantic choice compares the user's turn to them.
    examples: list[NonEmpty] = Field(default_factory=list)
    # Whole words or phrases, matched case-insensitively in the user's turn.
    keywords: list[NonEmpty] = Field(default_factory=list)
    system_prompt: str = ""
    memory: MemoryPolicy = "history+recall"
    retrieval: Retrieval = Retrieval()
    sampling: SamplingDefaults = SamplingDefaults()
    # Model ids to try in order; `local` is the first local model the inference service serves.
    candidates: list[str] = Field(default_factory=lambda: [LOCAL], min_length=1)

    @field_validator("keywords")
    @classmethod
    def _lower_keywords(cls, keywords: list[str]) -> list[str]:
        return [k.lower() for k in keywords]

    @field_validator("candidates")
    @classmethod
    def _model_ids(cls, candidates: list[str]) -> list[str]:
        for candidate in candidates:
            if candidate != LOCAL and not _MODEL_ID.match(candidate):
                raise ValueError(f"{candidate!r} is neither `local` nor a model id such as `openai/gpt-4o-mini`")
        if len(set(candidates)) != len(candidates):
            raise ValueError("a model appears twice in the chain")
        return candidates


class Routing(_Strict):
    """How the agent is chosen from the content when the model is `llmmesh`."""

    # Below this combined score (similarity, plus the keyword bonus) the default agent answers.
    threshold: float = Field(default=0.2, ge=0, le=1)
    # An agent's similarity: to its closest example (`max`) or to the mean of its examples (`centroid`).
    scoring: Literal["max", "centroid"] = "max"
    # Added to the similarity of an agent whose keyword appears in the turn; a hit alone clears the threshold.
    keyword_bonus: float = Field(default=0.15, ge=0, le=1)
    # How many of the latest user turns are read (newest first, one embedding).
    user_turns: int = Field(default=2, ge=1, le=10)


class RouterConfig(_Strict):
    default_agent: str = "general"
    routing: Routing = Routing()
    agents: list[Agent] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> RouterConfig:
        names = [a.name for a in self.agents]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"agent names must be unique: {', '.join(twice)} appear more than once")
        if self.default_agent not in names:
            raise ValueError(f"default_agent {self.default_agent!r} is not one of the agents ({', '.join(names)})")
        return self

    def agent(self, name: str) -> Agent | None:
        return next((a for a in self.agents if a.name == name), None)

    @property
    def default(self) -> Agent:
        found = self.agent(self.default_agent)
        assert found is not None  # checked by _names
        return found


def parse_config(raw: Any, source: str = "router config") -> RouterConfig:
    """Validates parsed YAML; a ConfigError lists every problem, one per line."""
    try:
        return RouterConfig.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        lines = [f"{_where(error['loc'], raw)}: {error['msg']}" for error in exc.errors()]
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


def load_config(path: Path) -> RouterConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"router config {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"router config {path} is not valid YAML: {exc}") from None
    return parse_config(raw, f"router config {path}")


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """`agents[1] (code-reviewer).memory` rather than `agents.1.memory`."""
    parts: list[str] = []
    for i, key in enumerate(loc):
        if isinstance(key, int) and parts:
            parts[-1] += f"[{key}]"
            if loc[:i] == ("agents",) and isinstance(raw, dict):
                agents = raw.get("agents")
                if isinstance(agents, list) and key < len(agents) and isinstance(agents[key], dict):
                    parts[-1] += f" ({agents[key].get('name', '?')})"
        else:
            parts.append(str(key))
    return ".".join(parts) or "(top level)"
