"""Fitting a conversation into the model's context, counted with the model's own tokenizer
and chat template (the same encoding the engine then runs on; nothing is estimated).

The prompt is: the leading system messages (agent persona or session prompt) → the
server-held history, oldest first, in whole turns → recalled memories (one system message)
→ the new messages. When it does not fit the budget (context minus the completion's share),
the oldest turns go first and in one large step: history is cut to half of the room left for
it, so the next turns reuse the same prefix (and the engine's prefix cache) until the next
step. The memories go before any history is dropped only if the new messages alone leave
them no room. The system messages and the new messages are never dropped; if they alone do
not fit, the engine reports context_length_exceeded as for any request.

The memories sit after the history, not before it: they change with every question, and a
block that changes ahead of the history would break the cached prefix on every turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]
Encode = Callable[[list[Message]], list[int]]

MEMORY_PREAMBLE = (
    "Relevant things you remember from earlier in this conversation or from earlier "
    "conversations with this user (use them only if they help):"
)


@dataclass(frozen=True)
class FittedPrompt:
    ids: list[int]
    messages: list[Message]
    dropped_turns: int
    memories_used: int


def memory_message(memories: Sequence[str]) -> Message:
    return {"role": "system", "content": MEMORY_PREAMBLE + "".join(f"\n- {m}" for m in memories)}


def select_memories(memories: Sequence[str], count_text: Callable[[str], int], cap_tokens: int) -> list[str]:
    """Best first, as many as fit in `cap_tokens` (a memory that does not fit is skipped)."""
    chosen: list[str] = []
    used = 0
    for memory in memories:
        cost = count_text(memory) + 2  # the "- " bullet and its line break
        if used + cost <= cap_tokens:
            chosen.append(memory)
            used += cost
    return chosen


def _assemble(messages: list[Message], history: Sequence[list[Message]], memories: list[str]) -> list[Message]:
    lead = 0
    while lead < len(messages) and messages[lead].get("role") in ("system", "developer"):
        lead += 1
    block = [memory_message(memories)] if memories else []
    return [*messages[:lead], *(m for turn in history for m in turn), *block, *messages[lead:]]


def fit_prompt(
    encode: Encode,
    count_text: Callable[[str], int],
    messages: list[Message],
    history: Sequence[list[Message]],
    memories: Sequence[str],
    *,
    budget: int,
    memory_cap_tokens: int,
) -> FittedPrompt:
    """The prompt within `budget` tokens where possible (see the module doc)."""
    chosen = select_memories(memories, count_text, memory_cap_tokens) if memories else []

    def build(dropped: int, mems: list[str]) -> tuple[list[Message], list[int]]:
        chat = _assemble(messages, history[dropped:], mems)
        return chat, encode(chat)

    chat, ids = build(0, chosen)
    if len(ids) <= budget:
        return FittedPrompt(ids, chat, 0, len(chosen))

    everything = len(history)
    chat, fixed = build(everything, chosen)
    if len(fixed) > budget and chosen:
        chosen = []  # the new messages need the room more than the memories
        chat, fixed = build(everything, chosen)
    if everything == 0 or len(fixed) > budget:
        return FittedPrompt(fixed, chat, everything, len(chosen))

    # Smallest number of oldest turns to drop so the prompt is at most `target` tokens.
    target = len(fixed) + (budget - len(fixed)) // 2
    low, high = 0, everything  # build(high) fits; find the smallest that does
    best_chat, best_ids = chat, fixed
    while low < high:
        middle = (low + high) // 2
        candidate_chat, candidate_ids = build(middle, chosen)
        if len(candidate_ids) <= target:
            high, best_chat, best_ids = middle, candidate_chat, candidate_ids
        else:
            low = middle + 1
    return FittedPrompt(best_ids, best_chat, high, len(chosen))
