"""Fitting a conversation into the context, with SmolLM2's real tokenizer and chat template."""

from __future__ import annotations

from typing import Any

from services.inference.context import MEMORY_PREAMBLE, fit_prompt, select_memories
from services.inference.tokenizer import ChatTokenizer


def turn(i: int, words: int = 200) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"question {i} " + "lorem ipsum " * words},
        {"role": "assistant", "content": f"answer {i}"},
    ]


SYSTEM = {"role": "system", "content": "You are terse."}
NEW = {"role": "user", "content": "the newest question"}


def fit(tok: ChatTokenizer, history: list[list[dict[str, Any]]], budget: int, memories: list[str] | None = None) -> Any:
    return fit_prompt(
        lambda chat: tok.encode_chat(chat),
        tok.count_text,
        [SYSTEM, NEW],
        history,
        memories or [],
        budget=budget,
        memory_cap_tokens=64,
    )


def test_everything_stays_when_it_fits(smollm2_tokenizer: ChatTokenizer) -> None:
    history = [turn(0), turn(1)]

    fitted = fit(smollm2_tokenizer, history, budget=8000)

    assert fitted.dropped_turns == 0
    assert fitted.messages == [SYSTEM, *history[0], *history[1], NEW]
    assert fitted.ids == smollm2_tokenizer.encode_chat(fitted.messages)


def test_oldest_turns_go_first_in_one_large_step(smollm2_tokenizer: ChatTokenizer) -> None:
    history = [turn(i) for i in range(10)]
    full = len(smollm2_tokenizer.encode_chat([SYSTEM, *(m for t in history for m in t), NEW]))
    budget = full - 10  # just over: trimming must happen

    fitted = fit(smollm2_tokenizer, history, budget=budget)

    # Down to about half the room, not just below the budget.
    assert len(fitted.ids) <= budget // 2 + 100
    assert fitted.dropped_turns >= 4
    kept = history[fitted.dropped_turns :]
    assert fitted.messages == [SYSTEM, *(m for t in kept for m in t), NEW]
    assert len(fitted.ids) == len(smollm2_tokenizer.encode_chat(fitted.messages))  # counted, not estimated


def test_turns_are_dropped_whole(smollm2_tokenizer: ChatTokenizer) -> None:
    history = [turn(i) for i in range(6)]

    fitted = fit(smollm2_tokenizer, history, budget=700)

    contents = [m["content"] for m in fitted.messages]
    for i in range(6):
        has_question = any(c.startswith(f"question {i} ") for c in contents)
        assert has_question == (f"answer {i}" in contents)


def test_system_and_newest_message_are_never_dropped(smollm2_tokenizer: ChatTokenizer) -> None:
    fitted = fit(smollm2_tokenizer, [turn(i, words=500) for i in range(4)], budget=60)

    assert fitted.messages == [SYSTEM, NEW]
    assert fitted.dropped_turns == 4


def test_memories_sit_between_history_and_the_new_message(smollm2_tokenizer: ChatTokenizer) -> None:
    fitted = fit(smollm2_tokenizer, [turn(0, words=5)], budget=8000, memories=["The user said: I like tea."])

    assert fitted.memories_used == 1
    assert fitted.messages[-2]["role"] == "system"
    assert fitted.messages[-2]["content"].startswith(MEMORY_PREAMBLE)
    assert "I like tea." in fitted.messages[-2]["content"]
    assert fitted.messages[-1] == NEW


def test_memories_stay_within_their_token_cap(smollm2_tokenizer: ChatTokenizer) -> None:
    memories = [f"memory {i} " + "word " * 20 for i in range(10)]

    chosen = select_memories(memories, smollm2_tokenizer.count_text, 64)

    assert 1 <= len(chosen) < len(memories)
    assert sum(smollm2_tokenizer.count_text(m) + 2 for m in chosen) <= 64
    assert chosen == memories[: len(chosen)]  # best first


def test_memories_give_way_when_the_new_messages_need_the_room(smollm2_tokenizer: ChatTokenizer) -> None:
    alone = len(smollm2_tokenizer.encode_chat([SYSTEM, NEW]))

    fitted = fit(smollm2_tokenizer, [], budget=alone + 5, memories=["The user said: " + "tea " * 30])

    assert fitted.memories_used == 0
    assert fitted.messages == [SYSTEM, NEW]


def test_consecutive_turns_keep_the_same_prefix_between_trims(smollm2_tokenizer: ChatTokenizer) -> None:
    """Replays a growing conversation: after a trim the kept history is reused unchanged
    (the caller starts the next window where this one started) until the next trim."""
    budget = 2000
    history: list[list[dict[str, Any]]] = []
    window_start = 0
    trims = 0
    previous: list[dict[str, Any]] = []
    for i in range(30):
        window = history[window_start:]
        fitted = fit(smollm2_tokenizer, window, budget=budget)
        if fitted.dropped_turns:
            trims += 1
            window_start += fitted.dropped_turns
        elif previous:
            assert fitted.messages[: len(previous) - 1] == previous[:-1]
        assert len(fitted.ids) <= budget
        previous = fitted.messages
        history.append(turn(i, words=60))
    assert 1 <= trims <= 8
