"""RoutingPolicy: config parsing, model resolution and agent picking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmmesh.common.v1 import chat_pb2
from services.router.policy import AgentProfile, ModelEntry, RoutingPolicy, UnknownModelError
from services.router.servicer import _sampling
from services.router.settings import RouterSettings

REPO = Path(__file__).resolve().parents[2]


def config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "models": [
            {"id": "small", "backend_model": "small-backend", "owned_by": "acme"},
            {"id": "large"},
        ],
        "aliases": {"default": "small", "big": "large"},
        "default_agent": "general",
        "agents": [
            {"name": "general", "system_prompt": "You are helpful."},
            {
                "name": "coder",
                "keywords": ["Code", "BUG", "c++"],
                "system_prompt": "Review code.",
                "sampling": {"temperature": 0.25},
            },
            {"name": "coach", "keywords": ["gym", "bug"], "system_prompt": "Coach."},
        ],
    }
    raw.update(overrides)
    return raw


@pytest.fixture
def policy() -> RoutingPolicy:
    return RoutingPolicy.from_dict(config())


@pytest.fixture
def catalog(policy: RoutingPolicy) -> dict[str, ModelEntry]:
    """What the router's Catalog hands the policy: static entries plus discovered models."""
    return {**policy.models, "discovered": ModelEntry("discovered", "discovered")}


# ---------------------------------------------------------------- from_dict


def test_from_dict_builds_models_with_defaults(policy: RoutingPolicy) -> None:
    assert policy.models == {
        "small": ModelEntry("small", "small-backend", "acme"),
        "large": ModelEntry("large", "large", "llmmesh"),
    }
    assert policy.aliases == {"default": "small", "big": "large"}


def test_from_dict_lowercases_keywords_and_keeps_agent_order(policy: RoutingPolicy) -> None:
    assert [a.name for a in policy.agents] == ["general", "coder", "coach"]
    assert policy.agents[1] == AgentProfile("coder", "Review code.", ("code", "bug", "c++"), {"temperature": 0.25})


def test_from_dict_default_agent_is_the_configured_profile(policy: RoutingPolicy) -> None:
    assert policy.default_agent == AgentProfile("general", "You are helpful.")


def test_from_dict_default_agent_not_listed_gets_an_empty_profile() -> None:
    policy = RoutingPolicy.from_dict(config(default_agent="fallback"))

    assert policy.default_agent == AgentProfile("fallback")


def test_from_dict_accepts_no_static_models() -> None:
    # Models the inference service serves are discovered at run time; static entries are optional.
    policy = RoutingPolicy.from_dict(config(models=[]))

    assert policy.models == {}
    assert policy.aliases == {"default": "small", "big": "large"}


def test_from_dict_keeps_aliases_to_models_not_known_yet() -> None:
    policy = RoutingPolicy.from_dict(config(aliases={"fast": "tiny", 7: "small"}))

    assert policy.aliases == {"fast": "tiny", "7": "small"}


def test_from_dict_accepts_null_aliases_and_no_agents() -> None:
    policy = RoutingPolicy.from_dict({"models": [{"id": "m"}], "aliases": None})

    assert policy.aliases == {}
    assert policy.agents == []
    assert policy.pick_agent("anything") == (AgentProfile("general"), "default")


@pytest.mark.parametrize("text", ["", "models:\n", "agents:\n"], ids=["empty-file", "null-models", "null-agents"])
def test_from_file_with_empty_sections_loads_an_empty_policy(tmp_path: Path, text: str) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(text)

    policy = RoutingPolicy.from_file(path)

    assert (policy.models, policy.agents, policy.default_agent) == ({}, [], AgentProfile("general"))


# ---------------------------------------------------------------- resolve_model


def test_resolve_model_by_id(policy: RoutingPolicy, catalog: dict[str, ModelEntry]) -> None:
    assert policy.resolve_model("large", catalog) == (ModelEntry("large", "large"), "model")


def test_resolve_discovered_model_by_id(policy: RoutingPolicy, catalog: dict[str, ModelEntry]) -> None:
    assert policy.resolve_model("discovered", catalog) == (ModelEntry("discovered", "discovered"), "model")


def test_resolve_model_by_alias(policy: RoutingPolicy, catalog: dict[str, ModelEntry]) -> None:
    assert policy.resolve_model("default", catalog) == (ModelEntry("small", "small-backend", "acme"), "alias")


def test_model_id_wins_over_an_alias_of_the_same_name(policy: RoutingPolicy) -> None:
    catalog = {"default": ModelEntry("default", "real-default"), "small": ModelEntry("small", "small-backend")}

    assert policy.resolve_model("default", catalog) == (ModelEntry("default", "real-default"), "model")


def test_alias_resolves_only_once_its_target_is_in_the_catalog() -> None:
    policy = RoutingPolicy.from_dict(config(models=[], aliases={"fast": "tiny"}))

    with pytest.raises(UnknownModelError):
        policy.resolve_model("fast", {})
    assert policy.resolve_model("fast", {"tiny": ModelEntry("tiny", "tiny")}) == (ModelEntry("tiny", "tiny"), "alias")


@pytest.mark.parametrize("name", ["unknown", "", "Small", "small-backend"])
def test_resolve_unknown_model_raises(policy: RoutingPolicy, catalog: dict[str, ModelEntry], name: str) -> None:
    with pytest.raises(UnknownModelError) as caught:
        policy.resolve_model(name, catalog)

    assert caught.value.args == (name,)
    assert isinstance(caught.value, LookupError)


# ---------------------------------------------------------------- pick_agent


@pytest.mark.parametrize(
    ("text", "agent", "reason"),
    [
        ("please look at my code", "coder", "keyword:code"),
        ("CODE review please", "coder", "keyword:code"),
        ("There is a Bug!", "coder", "keyword:bug"),
        ("(code)", "coder", "keyword:code"),
        ("I write C++ daily", "coder", "keyword:c++"),
        ("new gym routine", "coach", "keyword:gym"),
        ("gym session, then fix a bug", "coder", "keyword:bug"),  # first agent in config order wins
    ],
)
def test_pick_agent_matches_whole_words_case_insensitively(
    policy: RoutingPolicy, text: str, agent: str, reason: str
) -> None:
    picked, why = policy.pick_agent(text)

    assert (picked.name, why) == (agent, reason)


@pytest.mark.parametrize("text", ["", "hello there", "my codebase", "decode this", "debugging", "gymnastics"])
def test_pick_agent_falls_back_to_the_default_agent(policy: RoutingPolicy, text: str) -> None:
    assert policy.pick_agent(text) == (policy.default_agent, "default")


def test_route_combines_model_and_agent_reasons(policy: RoutingPolicy, catalog: dict[str, ModelEntry]) -> None:
    decision = policy.route("big", "gym plan", catalog)

    assert decision.model == ModelEntry("large", "large")
    assert decision.agent.name == "coach"
    assert decision.reason == "alias,keyword:gym"


def test_route_unknown_model_raises(policy: RoutingPolicy, catalog: dict[str, ModelEntry]) -> None:
    with pytest.raises(UnknownModelError):
        policy.route("nope", "code", catalog)


# ---------------------------------------------------------------- deploy/router.yaml


def test_settings_point_at_the_shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMMESH_ROUTER_CONFIG_PATH", raising=False)

    assert RouterSettings().config_path == REPO / "deploy" / "router.yaml"


def test_shipped_router_yaml_loads() -> None:
    policy = RoutingPolicy.from_file(REPO / "deploy" / "router.yaml")
    served = {"smollm2-135m-instruct": ModelEntry("smollm2-135m-instruct", "smollm2-135m-instruct")}

    assert policy.aliases == {"default": "smollm2-135m-instruct", "llmmesh": "smollm2-135m-instruct"}
    assert policy.default_agent.name == "general"
    assert policy.default_agent.system_prompt == ""
    assert [a.name for a in policy.agents] == ["general", "code-reviewer", "sports-coach"]
    assert policy.route("default", "Can you review this Python function?", served).agent.name == "code-reviewer"
    assert policy.route("llmmesh", "Marathon training tips", served).agent.name == "sports-coach"
    assert policy.route("smollm2-135m-instruct", "What is the capital of France?", served).reason == "model,default"


def test_shipped_agent_sampling_defaults_fit_the_proto() -> None:
    policy = RoutingPolicy.from_file(REPO / "deploy" / "router.yaml")
    by_name = {a.name: a for a in policy.agents}

    coder = _sampling(by_name["code-reviewer"].sampling)

    assert isinstance(coder, chat_pb2.SamplingParams)
    assert coder.temperature == pytest.approx(0.2)
    assert not coder.HasField("top_p")
    assert _sampling(by_name["sports-coach"].sampling).temperature == pytest.approx(0.7)
    assert _sampling(by_name["general"].sampling) == chat_pb2.SamplingParams()


def test_unknown_sampling_default_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sampling defaults"):
        _sampling({"temperature": 0.5, "top_kk": 40})
