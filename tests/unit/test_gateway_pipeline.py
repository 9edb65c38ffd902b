"""The pure parts of the chat pipeline: prompt assembly, and the sampling merge it leaves to inference."""

from __future__ import annotations

from llmmesh.common.v1 import chat_pb2
from llmmesh.memory.v1 import memory_pb2
from services.common.messages import defaulted_fields, merge_sampling
from services.gateway.pipeline import assemble_prompt, reference_block, window_after_trim


def msg(role: str, content: str) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role=role, content=content)


# ---------------------------------------------------------------- assemble_prompt


def test_client_system_wins_over_agent_persona() -> None:
    new = [msg("system", "client system"), msg("user", "question")]

    assert assemble_prompt("agent persona", new) == [msg("system", "client system"), msg("user", "question")]


def test_developer_message_counts_as_client_system() -> None:
    new = [msg("developer", "dev rules"), msg("user", "question")]

    assert assemble_prompt("agent persona", new) == [msg("developer", "dev rules"), msg("user", "question")]


def test_persona_used_when_client_sends_no_system() -> None:
    assert assemble_prompt("agent persona", [msg("user", "question")]) == [
        msg("system", "agent persona"),
        msg("user", "question"),
    ]


def test_no_system_at_all_without_persona_or_client_system() -> None:
    assert assemble_prompt("", [msg("user", "question")]) == [msg("user", "question")]


def test_retrieved_passages_end_the_system_message_in_use() -> None:
    client = [msg("system", "client system"), msg("user", "question")]

    with_client = assemble_prompt("agent persona", client, "PASSAGES")
    with_persona = assemble_prompt("agent persona", [msg("user", "question")], "PASSAGES")
    alone = assemble_prompt("", [msg("user", "question")], "PASSAGES")

    assert with_client[0] == msg("system", "client system\n\nPASSAGES")
    assert client[0].content == "client system"  # the request's own message is left as it was
    assert with_persona[0] == msg("system", "agent persona\n\nPASSAGES")
    assert alone == [msg("system", "PASSAGES"), msg("user", "question")]


def test_reference_block_names_each_passage_document_best_first() -> None:
    passages = [
        memory_pb2.KnowledgePassage(document="a.md", text="first"),
        memory_pb2.KnowledgePassage(document="b.md", text="second"),
    ]

    block = reference_block(passages)

    assert block.index("[a.md]\nfirst") < block.index("[b.md]\nsecond")
    assert reference_block([]) == ""


def test_client_system_messages_move_to_the_front() -> None:
    new = [msg("user", "q1"), msg("assistant", "a1"), msg("system", "late system"), msg("user", "q2")]

    assert [m.content for m in assemble_prompt("persona", new)] == ["late system", "q1", "a1", "q2"]


# ---------------------------------------------------------------- window after a trim


def turn(seq: int) -> memory_pb2.Turn:
    return memory_pb2.Turn(turn_id=f"t{seq}", seq=seq)


def test_window_stays_when_nothing_was_dropped() -> None:
    assert window_after_trim([turn(3), turn(4)], 0) == 0


def test_window_starts_at_the_first_kept_turn() -> None:
    assert window_after_trim([turn(3), turn(4), turn(5)], 2) == 5


def test_window_starts_after_the_history_when_all_was_dropped() -> None:
    assert window_after_trim([turn(3), turn(4)], 2) == 5


# ---------------------------------------------------------------- merge_sampling


def test_client_values_win_and_agent_defaults_fill_the_rest() -> None:
    client = chat_pb2.SamplingParams(temperature=0.5, n=2)
    agent = chat_pb2.SamplingParams(temperature=0.25, top_p=0.75, max_tokens=100, seed=7, presence_penalty=1.0)

    merged = merge_sampling(client, agent)

    assert merged == chat_pb2.SamplingParams(
        temperature=0.5, top_p=0.75, max_tokens=100, seed=7, presence_penalty=1.0, n=2
    )


def test_defaulted_fields_are_those_only_the_agent_set() -> None:
    client = chat_pb2.SamplingParams(temperature=0.0, stop=["x"])
    agent = chat_pb2.SamplingParams(temperature=0.25, top_p=0.75, stop=["y"], top_k=40)

    assert defaulted_fields(client, agent) == {"top_p", "top_k"}
    assert defaulted_fields(agent, chat_pb2.SamplingParams()) == frozenset()


def test_client_explicit_zero_beats_agent_default() -> None:
    merged = merge_sampling(
        chat_pb2.SamplingParams(temperature=0.0, frequency_penalty=0.0),
        chat_pb2.SamplingParams(temperature=0.75, frequency_penalty=1.5),
    )

    assert merged.HasField("temperature")
    assert merged.temperature == 0.0
    assert merged.frequency_penalty == 0.0


def test_unset_client_fields_stay_unset_without_defaults() -> None:
    merged = merge_sampling(chat_pb2.SamplingParams(n=1), chat_pb2.SamplingParams())

    assert merged == chat_pb2.SamplingParams(n=1)
    assert not merged.HasField("temperature")


def test_client_stop_replaces_agent_stop() -> None:
    merged = merge_sampling(
        chat_pb2.SamplingParams(stop=["client"]), chat_pb2.SamplingParams(stop=["agent-1", "agent-2"])
    )

    assert list(merged.stop) == ["client"]


def test_agent_stop_used_when_client_sends_none() -> None:
    merged = merge_sampling(chat_pb2.SamplingParams(n=1), chat_pb2.SamplingParams(stop=["agent"]))

    assert list(merged.stop) == ["agent"]


def test_merge_does_not_mutate_its_inputs() -> None:
    client = chat_pb2.SamplingParams(temperature=0.5, stop=["client"])
    agent = chat_pb2.SamplingParams(top_p=0.75, stop=["agent"])
    client_before, agent_before = chat_pb2.SamplingParams(), chat_pb2.SamplingParams()
    client_before.CopyFrom(client)
    agent_before.CopyFrom(agent)

    merge_sampling(client, agent)

    assert client == client_before
    assert agent == agent_before


def test_structured_output_from_client_is_kept() -> None:
    merged = merge_sampling(
        chat_pb2.SamplingParams(json_schema='{"type": "object"}'), chat_pb2.SamplingParams(json_object=True)
    )

    assert merged.json_schema == '{"type": "object"}'
