"""`llmmesh knowledge` against the whole stack: files added through the memory service's own
port, embedded by the inference service's Embed RPC, found by SearchKnowledge, then deleted."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

LLMMESH = Path(sys.executable).with_name("llmmesh")  # the console script `make setup` installs
FACT = "The Ferncliff Harbour Run starts at 6:40 in the morning from the old lighthouse on Gull Point."
QUESTION = "When and where does the Ferncliff Harbour Run start?"


@pytest.fixture(scope="module")
def memory(stack: Stack) -> Iterator[memory_pb2_grpc.MemoryServiceStub]:
    with grpc.insecure_channel(stack.internal_target("memory")) as channel:
        yield memory_pb2_grpc.MemoryServiceStub(channel)


def llmmesh(stack: Stack, tenant: str, *argv: str) -> subprocess.CompletedProcess[str]:
    where = ["--memory-target", stack.internal_target("memory"), "--tenant", tenant]
    return subprocess.run(
        [str(LLMMESH), "knowledge", *where, *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_knowledge_add_list_search_delete(
    stack: Stack, memory: memory_pb2_grpc.MemoryServiceStub, tmp_path: Path
) -> None:
    tenant = f"kn-{uuid.uuid4().hex[:8]}"
    handbook = tmp_path / "handbook.md"
    handbook.write_text(
        "# Club handbook\n\nEasy runs build the aerobic base.\n\n" + FACT + "\n\nTaper in the last two weeks."
    )
    tips = tmp_path / "tips.txt"
    tips.write_text("Strength work twice a week protects the knees.\n\nHydrate before long runs.")

    added = llmmesh(stack, tenant, "add", "--collection", "coach", str(handbook), str(tips))
    assert added.returncode == 0, added.stderr
    listed = llmmesh(stack, tenant, "list")
    assert [row.split()[:2] for row in listed.stdout.splitlines()[1:]] == [
        ["coach", "handbook.md"],
        ["coach", "tips.txt"],
    ]

    request = memory_pb2.SearchKnowledgeRequest(tenant=tenant, collection="coach", query=QUESTION, max_tokens=400)
    found = memory.SearchKnowledge(request, timeout=30)
    assert FACT in found.passages[0].text
    other = memory_pb2.SearchKnowledgeRequest(tenant=tenant + "-other", collection="coach", query=QUESTION)
    with pytest.raises(grpc.RpcError) as unknown:
        memory.SearchKnowledge(other, timeout=30)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    deleted = llmmesh(stack, tenant, "delete", "--collection", "coach")
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(grpc.RpcError) as gone:
        memory.SearchKnowledge(request, timeout=30)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert llmmesh(stack, tenant, "list").stdout.strip() == f"no knowledge for tenant {tenant}"
