"""The pure parts of the chat pipeline: prompt assembly and sampling merge."""

from __future__ import annotations

from llmmesh.common.v1 import chat_pb2
from services.gateway.pipeline import _merge_sampling, assemble_prompt


def msg(role: str, content: str) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role=role, content=content)


HISTORY = [msg("user", "earlier question"), msg("assistant", "earlier answer")]


# ---------------------------------------------------------------- assemble_prompt


def test_client_system_wins_over_agent_persona() -> None:
    new = [msg("system", "client system"), msg("user", "question")]

    prompt = assemble_prompt("agent persona", HISTORY, new)

    assert prompt == [msg("system", "client system"), *HISTORY, msg("user", "question")]


def test_developer_message_counts_as_client_system() -> None:
    new = [msg("developer", "dev rules"), msg("user", "question")]

    prompt = assemble_prompt("agent persona", [], new)

    assert prompt == [msg("developer", "dev rules"), msg("user", "question")]


def test_persona_used_when_client_sends_no_system() -> None:
    prompt = assemble_prompt("agent persona", HISTORY, [msg("user", "question")])

    assert prompt == [msg("system", "agent persona"), *HISTORY, msg("user", "question")]


def test_no_system_at_all_without_persona_or_client_system() -> None:
    prompt = assemble_prompt("", HISTORY, [msg("user", "question")])

    assert prompt == [*HISTORY, msg("user", "question")]


def test_history_sits_between_system_and_new_messages() -> None:
    new = [msg("user", "q1"), msg("assistant", "a1"), msg("system", "late system"), msg("user", "q2")]

    prompt = assemble_prompt("persona", HISTORY, new)

    assert [m.content for m in prompt] == ["late system", "earlier question", "earlier answer", "q1", "a1", "q2"]


def test_assemble_prompt_without_history() -> None:
    assert assemble_prompt("persona", [], [msg("user", "q")]) == [msg("system", "persona"), msg("user", "q")]


# ---------------------------------------------------------------- _merge_sampling


def test_client_values_win_and_agent_defaults_fill_the_rest() -> None:
    client = chat_pb2.SamplingParams(temperature=0.5, n=2)
    agent = chat_pb2.SamplingParams(temperature=0.25, top_p=0.75, max_tokens=100, seed=7, presence_penalty=1.0)

    merged = _merge_sampling(client, agent)

    assert merged == chat_pb2.SamplingParams(
        temperature=0.5, top_p=0.75, max_tokens=100, seed=7, presence_penalty=1.0, n=2
    )


def test_client_explicit_zero_beats_agent_default() -> None:
    merged = _merge_sampling(
        chat_pb2.SamplingParams(temperature=0.0, frequency_penalty=0.0),
        chat_pb2.SamplingParams(temperature=0.75, frequency_penalty=1.5),
    )

    assert merged.HasField("temperature")
    assert merged.temperature == 0.0
    assert merged.frequency_penalty == 0.0


def test_unset_client_fields_stay_unset_without_defaults() -> None:
    merged = _merge_sampling(chat_pb2.SamplingParams(n=1), chat_pb2.SamplingParams())

    assert merged == chat_pb2.SamplingParams(n=1)
    assert not merged.HasField("temperature")


def test_client_stop_replaces_agent_stop() -> None:
    merged = _merge_sampling(
        chat_pb2.SamplingParams(stop=["client"]), chat_pb2.SamplingParams(stop=["agent-1", "agent-2"])
    )

    assert list(merged.stop) == ["client"]


def test_agent_stop_used_when_client_sends_none() -> None:
    merged = _merge_sampling(chat_pb2.SamplingParams(n=1), chat_pb2.SamplingParams(stop=["agent"]))

    assert list(merged.stop) == ["agent"]


def test_merge_does_not_mutate_its_inputs() -> None:
    client = chat_pb2.SamplingParams(temperature=0.5, stop=["client"])
    agent = chat_pb2.SamplingParams(top_p=0.75, stop=["agent"])
    client_before, agent_before = chat_pb2.SamplingParams(), chat_pb2.SamplingParams()
    client_before.CopyFrom(client)
    agent_before.CopyFrom(agent)

    _merge_sampling(client, agent)

    assert client == client_before
    assert agent == agent_before


def test_structured_output_from_client_is_kept() -> None:
    merged = _merge_sampling(
        chat_pb2.SamplingParams(json_schema='{"type": "object"}'), chat_pb2.SamplingParams(json_object=True)
    )

    assert merged.json_schema == '{"type": "object"}'
