"""RoutingPolicy: model names, the content choice (semantic, keywords, threshold), candidate
chains and the public catalog. Vectors here are hand-made unit vectors, so every score is known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.router.config import parse_config
from services.router.policy import (
    Choice,
    NothingServedError,
    PublicModel,
    RoutingPolicy,
    UnknownAgentError,
    UnknownModelError,
    Vector,
    routing_text,
)

SERVED = ("small-local", "openai/gpt-4o-mini", "other-local")
AXES = {"general": 0, "coder": 1, "coach": 2}


def config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "default_agent": "general",
        "routing": {"threshold": 0.5, "keyword_bonus": 0.2, "scoring": "max"},
        "agents": [
            {"name": "general", "description": "Anything.", "examples": ["g1", "g2"]},
            {
                "name": "coder",
                "description": "Code.",
                "examples": ["c1", "c2"],
                "keywords": ["Code", "pull request", "c++"],
                "candidates": ["openai/gpt-4o-mini", "local", "anthropic/claude"],
            },
            {"name": "coach", "description": "Sport.", "examples": ["s1"], "keywords": ["gym"]},
        ],
    }
    raw.update(overrides)
    return raw


def axis(name: str, cos: float = 1.0) -> list[float]:
    """An example vector at angle acos(cos) from the agent's axis, towards a dimension of its
    own (4), so it is orthogonal to every query's remainder (5)."""
    vector = [0.0] * 6
    vector[AXES[name]] = cos
    vector[4] = float(np.sqrt(max(0.0, 1 - cos * cos)))
    return vector


def query(**scores: float) -> Vector:
    """A unit vector whose similarity to each agent's axis is the given score."""
    vector = np.zeros(6, dtype=np.float32)
    for name, score in scores.items():
        vector[AXES[name]] = score
    vector[5] = np.sqrt(max(0.0, 1 - float(np.sum(vector**2))))
    return vector


@pytest.fixture
def policy() -> RoutingPolicy:
    # Each agent's examples lie on its own axis (the second general example a little off it).
    vectors = {"g1": axis("general"), "g2": axis("general", 0.8), "c1": axis("coder"), "c2": axis("coder", 0.6)}
    vectors["s1"] = axis("coach")
    return RoutingPolicy(parse_config(config())).with_vectors(vectors)


def choose(policy: RoutingPolicy, text: str, vector: Vector | None) -> tuple[str, str]:
    choice = policy.choose(text, vector)
    return choice.agent.name, choice.reason


# ---------------------------------------------------------------- model names


def test_llmmesh_asks_for_the_content_choice(policy: RoutingPolicy) -> None:
    target = policy.target("llmmesh", SERVED)

    assert (target.kind, target.agent.name) == ("content", "general")


def test_llmmesh_agent_pins_the_agent(policy: RoutingPolicy) -> None:
    target = policy.target("llmmesh-coach", SERVED)

    assert (target.kind, target.agent.name) == ("pinned", "coach")


@pytest.mark.parametrize("model", ["small-local", "openai/gpt-4o-mini"])
def test_a_served_model_is_that_model_with_the_default_agent(policy: RoutingPolicy, model: str) -> None:
    target = policy.target(model, SERVED)
    plan = policy.plan(target, Choice(target.agent, "model"), SERVED)

    assert (target.kind, target.agent.name, target.model) == ("model", "general", model)
    assert plan.candidates == (model,)


@pytest.mark.parametrize("model", ["", "LLMMESH", "llmmesh-", "llmmesh-nobody", "anthropic/claude", "gpt-4"])
def test_unknown_model_names_raise(policy: RoutingPolicy, model: str) -> None:
    with pytest.raises(UnknownModelError):
        policy.target(model, SERVED)


def test_the_override_names_an_agent(policy: RoutingPolicy) -> None:
    assert policy.override("coder").name == "coder"
    with pytest.raises(UnknownAgentError):
        policy.override("Coder")


# ---------------------------------------------------------------- the content choice


def test_the_closest_examples_win(policy: RoutingPolicy) -> None:
    assert choose(policy, "anything", query(coder=0.7, coach=0.3)) == ("coder", "semantic:0.70")
    assert choose(policy, "anything", query(coach=0.6, general=0.55)) == ("coach", "semantic:0.60")


def test_max_scoring_takes_the_closest_example_centroid_the_mean() -> None:
    vectors = {"g1": axis("general"), "g2": axis("general"), "c1": axis("coder"), "c2": axis("coder", 0.0)}
    vectors["s1"] = axis("coach")
    by_max = RoutingPolicy(parse_config(config())).with_vectors(vectors)
    by_centroid = RoutingPolicy(parse_config(config(routing={"scoring": "centroid"}))).with_vectors(vectors)
    near_c1 = query(coder=0.9)

    assert by_max.vectors is not None
    assert by_centroid.vectors is not None
    assert by_max.vectors.similarities(near_c1, "max")["coder"] == pytest.approx(0.9, abs=1e-6)
    # c1 and c2 are orthogonal: their centroid is 45 degrees from each.
    assert by_centroid.vectors.similarities(near_c1, "centroid")["coder"] == pytest.approx(0.9 / np.sqrt(2), abs=1e-3)


def test_below_the_threshold_the_default_agent_answers(policy: RoutingPolicy) -> None:
    assert choose(policy, "anything", query(coder=0.45, coach=0.4)) == ("general", "default")


def test_a_keyword_adds_its_bonus(policy: RoutingPolicy) -> None:
    # 0.35 + 0.2 beats the threshold (0.5) and the general agent's 0.5.
    assert choose(policy, "my CODE", query(coder=0.35, general=0.5)) == ("coder", "keyword:code")
    # Not enough when another agent is far closer.
    assert choose(policy, "my code", query(coder=0.1, coach=0.9)) == ("coach", "semantic:0.90")


def test_a_keyword_alone_clears_the_threshold(policy: RoutingPolicy) -> None:
    assert choose(policy, "my code", query(coder=0.1, general=0.2)) == ("coder", "keyword:code")
    assert choose(policy, "my code", query(coder=0.1, general=0.6)) == ("general", "semantic:0.60")


def test_an_agent_without_examples_wins_by_its_keywords() -> None:
    raw = config()
    raw["agents"].append({"name": "poet", "description": "Poems.", "keywords": ["sonnet"]})
    vectors = {
        "g1": axis("general"),
        "g2": axis("general"),
        "c1": axis("coder"),
        "c2": axis("coder"),
        "s1": axis("coach"),
    }
    policy = RoutingPolicy(parse_config(raw)).with_vectors(vectors)

    assert choose(policy, "a sonnet please", query(general=0.3)) == ("poet", "keyword:sonnet")


@pytest.mark.parametrize(
    ("text", "agent", "reason"),
    [
        ("please open a Pull Request", "coder", "keyword:pull request"),
        ("I write C++ daily", "coder", "keyword:c++"),
        ("(code)", "coder", "keyword:code"),
        ("new gym routine", "coach", "keyword:gym"),
        ("gym, then code", "coder", "keyword:code"),  # config order decides between agents
        ("decode this", "general", "default"),  # whole words only
        ("gymnastics", "general", "default"),
        ("", "general", "default"),
    ],
)
def test_without_vectors_the_keyword_rules_decide(policy: RoutingPolicy, text: str, agent: str, reason: str) -> None:
    assert choose(policy, text, None) == (agent, reason)


def test_a_query_of_the_wrong_size_falls_back_to_the_keywords(policy: RoutingPolicy) -> None:
    assert choose(policy, "gym", np.ones(384, dtype=np.float32) / np.sqrt(384)) == ("coach", "keyword:gym")


def test_a_policy_is_semantic_only_once_every_example_has_a_vector() -> None:
    bare = RoutingPolicy(parse_config(config()))

    assert not bare.semantic_ready
    assert bare.example_texts == ["c1", "c2", "g1", "g2", "s1"]
    assert not bare.with_vectors({"g1": axis("general")}).semantic_ready


def test_the_routing_text_is_the_latest_user_turns_newest_first() -> None:
    assert routing_text(["first", "  ", "second", "third"], 2) == "third\nsecond"
    assert routing_text(["only"], 3) == "only"
    assert routing_text([], 2) == ""


# ---------------------------------------------------------------- candidates


def test_a_chain_keeps_its_order_resolves_local_and_skips_what_is_not_served(policy: RoutingPolicy) -> None:
    coder = policy.override("coder")

    assert policy.candidates(coder, SERVED) == ("openai/gpt-4o-mini", "small-local")
    assert policy.candidates(coder, ("other-local",)) == ("other-local",)
    assert policy.candidates(coder, ()) == ()


def test_a_chain_with_nothing_served_is_an_error(policy: RoutingPolicy) -> None:
    target = policy.target("llmmesh-coach", SERVED)

    with pytest.raises(NothingServedError) as caught:
        policy.plan(target, Choice(target.agent, "pinned"), ("openai/gpt-4o-mini",))

    assert (caught.value.agent, caught.value.chain) == ("coach", ("local",))


# ---------------------------------------------------------------- the public catalog


def test_public_models_are_the_agents_names_and_the_served_models(policy: RoutingPolicy) -> None:
    listed = policy.public_models(SERVED)

    assert [m.id for m in listed] == [
        "llmmesh",
        "llmmesh-general",
        "llmmesh-coder",
        "llmmesh-coach",
        "small-local",
        "openai/gpt-4o-mini",
        "other-local",
    ]
    assert listed[2] == PublicModel("llmmesh-coder", "llmmesh", "openai/gpt-4o-mini", "coder", "Code.")
    assert listed[5].owned_by == "openai"


def test_a_name_nothing_can_serve_is_not_listed(policy: RoutingPolicy) -> None:
    assert [m.id for m in policy.public_models(("openai/gpt-4o-mini",))] == ["llmmesh-coder", "openai/gpt-4o-mini"]
    assert policy.public_models(()) == []
