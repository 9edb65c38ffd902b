"""Retrieval end to end in the in-process mesh: a fact present only in a document added to the
sports coach's collection (deploy/router.yaml) reaches that agent's prompt for a question about
it, and no longer once the document is deleted. Knowledge is added and deleted the way the
AddKnowledge and DeleteKnowledge RPCs do it, embedded through the inference service's Embed RPC."""

from __future__ import annotations

from services.memory.knowledge import Knowledge
from tests.unit.mesh import Mesh

FACT = "The Ferncliff Harbour Run starts at 6:40 in the morning from the old lighthouse on Gull Point."
QUESTION = "What time does the Ferncliff Harbour Run start, and where?"
HANDBOOK = (
    "# Club handbook\n\nEasy runs build the aerobic base; most of a marathon plan is run at a talking pace.\n\n"
    f"Race calendar. {FACT} Bring a headlamp.\n\nTaper in the last two weeks, keeping some speed work."
)


def prompt_text(mesh: Mesh) -> str:
    return "\n".join(str(m.get("content", "")) for m in mesh.backend.last_prompt)


async def test_a_fact_only_in_a_document_reaches_the_agents_prompt_until_deleted(mesh: Mesh) -> None:
    knowledge = Knowledge(mesh.core.vectors, mesh.core.embeddings)
    await knowledge.add("default", "sports-coach", [("handbook.md", HANDBOOK)])

    answered = await mesh.chat(QUESTION, model="llmmesh-sports-coach")
    assert answered.status_code == 200, answered.text
    assert FACT in prompt_text(mesh)

    await knowledge.delete("default", "sports-coach", "")
    answered = await mesh.chat(QUESTION, model="llmmesh-sports-coach")
    assert answered.status_code == 200, answered.text
    assert "Gull Point" not in prompt_text(mesh)  # the question names the run, not where it starts
