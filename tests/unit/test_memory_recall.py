"""Long-term recall as a retrieval measure: a 60-turn conversation whose first 30 turns plant
facts, a 10-turn short-term window, then a question about each fact. The fact must be among
the memories recalled for the question (what reaches the prompt), for at least 90% of them.
Real embeddings (all-MiniLM-L6-v2), embedded Qdrant, the real indexer; the model's answers
are the instant backend's (recall does not depend on them)."""

from __future__ import annotations

import uuid
from pathlib import Path

from llmmesh.memory.v1 import memory_pb2
from services.inference.embedder import Embedder
from services.inference.tokenizer import ChatTokenizer
from tests.unit.mesh import MeshOptions, in_process_mesh

# (planted statement, question about it)
FACTS = [
    ("My sister's name is Margot.", "What is my sister's name?"),
    ("I was born in Valparaíso, Chile.", "Where was I born?"),
    ("My dog is a beagle called Pickle.", "What kind of dog do I have?"),
    ("I am allergic to peanuts.", "What food am I allergic to?"),
    ("My favourite colour is teal.", "What is my favourite colour?"),
    ("I drive a red 2011 Volvo estate.", "What car do I drive?"),
    ("I work as a hydrologist for the regional water board.", "What is my job?"),
    ("My wedding anniversary is on the 14th of June.", "When is my wedding anniversary?"),
    ("I play the cello in a community orchestra.", "Which musical instrument do I play?"),
    ("My daughter studies marine biology in Aberdeen.", "What does my daughter study?"),
    ("I ran my first marathon in Rotterdam in 3 hours 41 minutes.", "What was my marathon time?"),
    ("My blood type is O negative.", "What is my blood type?"),
    ("I am learning Japanese on Tuesday evenings.", "Which language am I learning?"),
    ("My favourite book is The Left Hand of Darkness.", "What is my favourite book?"),
    ("I keep three beehives in my garden.", "How many beehives do I keep?"),
    ("My landlord is called Mr. Okonkwo.", "What is my landlord's name?"),
    ("I broke my left wrist skiing in 2019.", "Which bone did I break skiing?"),
    ("My grandmother taught me to bake sourdough.", "Who taught me to bake bread?"),
    ("I take the 7:42 train to work every morning.", "What time is my train to work?"),
    ("My wifi password hint is the name of my first cat, Biscuit.", "What was my first cat called?"),
    ("I support Atlético Madrid.", "Which football club do I support?"),
    ("My favourite dish is mushroom risotto.", "What is my favourite dish?"),
    ("I am saving up for a trip to Patagonia next spring.", "Where am I planning to travel?"),
    ("My son is afraid of thunderstorms.", "What is my son afraid of?"),
    ("I have a vintage typewriter from 1952.", "What old machine do I own?"),
    ("My dentist appointment is on Friday at 3 pm.", "When is my dentist appointment?"),
    ("I grow chili peppers on my balcony.", "What do I grow on my balcony?"),
    ("My best friend from school is named Ingrid.", "What is my best friend's name?"),
    ("I speak Portuguese with my mother.", "Which language do I speak with my mother?"),
    ("I collect antique maps of the Baltic Sea.", "What do I collect?"),
]

FILLER = [
    "Can you suggest something to do this weekend?",
    "Tell me a short joke.",
    "What is a good way to stay focused?",
    "Give me an idea for dinner tonight.",
    "How do I make my mornings calmer?",
    "What is an interesting fact about space?",
]


async def test_planted_facts_are_recalled_after_they_left_the_window(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    options = MeshOptions(window_turns=10, recall_top_k=5)
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        sid = f"recall-{uuid.uuid4().hex[:8]}"
        for statement, _ in FACTS:
            assert (await mesh.chat(statement, session_id=sid)).status_code == 200
            await mesh.settle()
        for i in range(30):
            assert (await mesh.chat(FILLER[i % len(FILLER)], session_id=sid)).status_code == 200
            await mesh.settle()

        memory = mesh.pipeline._clients.memory
        hits = 0
        misses = []
        for statement, question in FACTS:
            context = await memory.GetContext(
                memory_pb2.GetContextRequest(tenant="default", session_id=sid, query=question)
            )
            window_texts = {m.content for t in context.window for m in t.messages}
            assert statement not in window_texts  # it is long-term memory by now
            if statement in [m.text for m in context.recalled]:
                hits += 1
            else:
                misses.append(question)
        rate = hits / len(FACTS)
        print(f"\nrecall of planted facts: {hits}/{len(FACTS)} = {rate:.0%}; missed: {misses}")
        assert rate >= 0.9
