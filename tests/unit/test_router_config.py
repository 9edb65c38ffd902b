"""The router config: what a valid file gives, and that a broken one is refused with a message
naming the field at fault. Also that the shipped deploy/router.yaml is what the docs promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmmesh.common.v1 import chat_pb2
from llmmesh.router.v1 import router_pb2
from services.router.config import ConfigError, load_config, parse_config
from services.router.servicer import agent_message
from services.router.settings import RouterSettings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "router.yaml"


def agent(name: str = "general", **fields: Any) -> dict[str, Any]:
    return {"name": name, "description": f"The {name} agent.", **fields}


def minimal(**overrides: Any) -> dict[str, Any]:
    return {"default_agent": "general", "agents": [agent()], **overrides}


def test_a_minimal_config_gets_the_defaults() -> None:
    config = parse_config(minimal())
    general = config.default

    assert (general.memory, general.candidates, general.retrieval.enabled) == ("history+recall", ["local"], False)
    assert general.sampling.values() == {}
    assert (config.routing.scoring, config.routing.user_turns) == ("max", 2)


def test_keywords_are_lowercased() -> None:
    config = parse_config(minimal(agents=[agent(keywords=["Python", "C++"])]))

    assert config.default.keywords == ["python", "c++"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (minimal(default_agent="nobody"), "default_agent 'nobody' is not one of the agents (general)"),
        (minimal(agents=[]), "agents: List should have at least 1 item"),
        (minimal(agents=[agent(), agent()]), "agent names must be unique: general appear"),
        (minimal(agents=[agent("Code Reviewer")]), "agents[0] (Code Reviewer).name: String should match pattern"),
        (
            minimal(agents=[agent(memory="forever")]),
            "agents[0] (general).memory: Input should be 'stateless', 'history'",
        ),
        (minimal(agents=[agent(sampling={"temperature": 3})]), "agents[0] (general).sampling.temperature: Input"),
        (minimal(agents=[agent(sampling={"top_kk": 3})]), "agents[0] (general).sampling.top_kk: Extra inputs"),
        (minimal(agents=[agent(retrieval={"enabled": True})]), "retrieval is enabled but names no collection"),
        (minimal(agents=[agent(candidates=[])]), "agents[0] (general).candidates: List should have at least 1"),
        (minimal(agents=[agent(candidates=["local", "local"])]), "a model appears twice in the chain"),
        (minimal(agents=[agent(candidates=["open ai/gpt"])]), "'open ai/gpt' is neither `local` nor a model id"),
        (minimal(agents=[agent(examples=[""])]), "agents[0] (general).examples[0]: String should have at least 1"),
        (minimal(agents=[{"name": "general"}]), "agents[0] (general).description: Field required"),
        (minimal(routing={"threshold": 1.5}), "routing.threshold: Input should be less than or equal to 1"),
        (minimal(routing={"scoring": "mean"}), "routing.scoring: Input should be 'max' or 'centroid'"),
        (minimal(aliases={"default": "x"}), "aliases: Extra inputs are not permitted"),
        (None, "agents: Field required"),
    ],
)
def test_a_bad_config_names_what_is_wrong(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "router.yaml")

    assert str(caught.value).startswith("router.yaml is invalid:\n  ")
    assert message in str(caught.value)


def test_every_problem_is_listed_at_once() -> None:
    raw = minimal(agents=[agent(memory="x", sampling={"top_p": 0})], routing={"user_turns": 0})

    with pytest.raises(ConfigError) as caught:
        parse_config(raw)

    assert len(str(caught.value).splitlines()) == 4  # the heading and three problems


@pytest.mark.parametrize(
    ("text", "message"),
    [("agents: [", "is not valid YAML"), ("- just\n- a list\n", "Input should be a valid dictionary")],
)
def test_a_file_that_is_not_a_config_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read: No such file"):
        load_config(tmp_path / "nope.yaml")


def test_the_router_does_not_start_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("default_agent: general\nagents:\n  - name: general\n    description: x\n    memory: forever\n")

    done = subprocess.run(
        [sys.executable, "-m", "services.router"],
        cwd=REPO,
        env={"LLMMESH_ROUTER_CONFIG_PATH": str(path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert f"router: router config {path} is invalid:" in done.stderr
    assert "agents[0] (general).memory: Input should be" in done.stderr


# ---------------------------------------------------------------- the shipped config


def test_settings_point_at_the_shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMMESH_ROUTER_CONFIG_PATH", raising=False)

    assert RouterSettings().config_path == SHIPPED


def test_the_shipped_config_has_the_three_agents_with_enough_examples() -> None:
    config = load_config(SHIPPED)

    assert config.default_agent == "general"
    assert [a.name for a in config.agents] == ["general", "code-reviewer", "sports-coach"]
    for each in config.agents:
        assert len(set(each.examples)) == len(each.examples) >= 10, each.name
        assert each.system_prompt
        assert each.description
        assert each.candidates[0] == "local"  # works with whatever model the inference service serves


def test_the_shipped_agents_map_to_the_proto() -> None:
    by_name = {a.name: agent_message(a) for a in load_config(SHIPPED).agents}
    coder, coach, general = by_name["code-reviewer"], by_name["sports-coach"], by_name["general"]

    assert coder.sampling_defaults.temperature == pytest.approx(0.2)
    assert not coder.sampling_defaults.HasField("top_p")
    assert coder.memory_policy == router_pb2.MEMORY_POLICY_HISTORY
    assert coder.retrieval == router_pb2.Retrieval()
    assert coach.retrieval == router_pb2.Retrieval(enabled=True, collection="sports-coach", max_tokens=400)
    assert coach.memory_policy == router_pb2.MEMORY_POLICY_HISTORY_RECALL
    assert general.sampling_defaults == chat_pb2.SamplingParams()
