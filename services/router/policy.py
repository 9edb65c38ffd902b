"""Routing policy: which public model maps to which backend, and which agent persona answers.

Thin for now: the model comes from the request (an id or an alias); the agent from keyword
rules on the last user message, else the default agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ModelEntry:
    id: str
    backend_model: str
    owned_by: str = "llmmesh"


@dataclass(frozen=True)
class AgentProfile:
    name: str
    system_prompt: str = ""
    keywords: tuple[str, ...] = ()
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    model: ModelEntry
    agent: AgentProfile
    reason: str


class UnknownModelError(LookupError):
    pass


@dataclass
class RoutingPolicy:
    models: dict[str, ModelEntry]
    aliases: dict[str, str]
    agents: list[AgentProfile]
    default_agent: AgentProfile

    @classmethod
    def from_file(cls, path: Path) -> RoutingPolicy:
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RoutingPolicy:
        models = {
            m["id"]: ModelEntry(m["id"], m.get("backend_model", m["id"]), m.get("owned_by", "llmmesh"))
            for m in raw.get("models") or []
        }
        # Aliases may point at models the inference service is discovered to serve, so they
        # are checked when used, not here.
        aliases = {str(k): str(v) for k, v in (raw.get("aliases") or {}).items()}
        agents = [
            AgentProfile(
                name=a["name"],
                system_prompt=a.get("system_prompt", ""),
                keywords=tuple(k.lower() for k in a.get("keywords", [])),
                sampling=dict(a.get("sampling") or {}),
            )
            for a in raw.get("agents") or []
        ]
        default_name = raw.get("default_agent", "general")
        default = next((a for a in agents if a.name == default_name), AgentProfile(default_name))
        return cls(models, aliases, agents, default)

    def resolve_model(self, requested: str, catalog: dict[str, ModelEntry]) -> tuple[ModelEntry, str]:
        if requested in catalog:
            return catalog[requested], "model"
        target = self.aliases.get(requested)
        if target is not None and target in catalog:
            return catalog[target], "alias"
        raise UnknownModelError(requested)

    def pick_agent(self, last_user_text: str) -> tuple[AgentProfile, str]:
        words = set(re.findall(r"[\w+#-]+", last_user_text.lower()))
        for agent in self.agents:
            hit = next((k for k in agent.keywords if k in words), None)
            if hit is not None:
                return agent, f"keyword:{hit}"
        return self.default_agent, "default"

    def route(self, requested_model: str, last_user_text: str, catalog: dict[str, ModelEntry]) -> Decision:
        model, model_reason = self.resolve_model(requested_model, catalog)
        agent, agent_reason = self.pick_agent(last_user_text)
        return Decision(model, agent, f"{model_reason},{agent_reason}")
