"""Knowledge for retrieval: cutting documents into passages, the token cap, and the four RPCs
over real gRPC with the real all-MiniLM-L6-v2 (in this process) and the embedded Qdrant engine;
then `llmmesh knowledge` against the same server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from services.cli.main import main
from services.common.channels import insecure_channel
from services.common.errors import from_rpc_error
from services.common.server import ServiceSpec, running_server
from services.common.settings import ServiceSettings
from services.memory.core import MemoryCore, RecallPolicy, dependency_unavailable
from services.memory.embedding import EmbeddingUnavailableError
from services.memory.knowledge import (
    CHUNK_MAX_TOKENS,
    OVERLAP_TOKENS,
    chunk,
    estimate_tokens,
    within_tokens,
)
from services.memory.server import SERVICE_NAME
from services.memory.servicer import MemoryServicer
from services.memory.store import SessionStore
from services.memory.vectors import EdgeVectorStore, Passage, ScoredPassage, ServerVectorStore, VectorStore
from tests.unit.helpers import free_port

# A made-up fact no model knows, in a document among others about running.
FACT = "The Ferncliff Harbour Run starts at 6:40 in the morning from the old lighthouse on Gull Point."
QUESTION = "What time does the Ferncliff Harbour Run start, and where?"
FILLER = [
    "Easy runs build the aerobic base. Most of a marathon plan is run at a pace where talking is easy.",
    "Strength work twice a week protects the knees and hips. Squats and lunges matter most.",
    "Hydrate before long runs; in heat, add electrolytes. Cramps often come from too little salt.",
    "Tapering means running less in the last two weeks before a race, keeping some speed work.",
]


def long_document(fact_at: int, paragraphs: int = 12) -> str:
    """Paragraphs of running advice, with FACT in paragraph `fact_at` (none when out of range)."""
    body = [f"{FILLER[i % len(FILLER)]} (Note {i}.) {FILLER[(i + 1) % len(FILLER)]}" for i in range(paragraphs)]
    if 0 <= fact_at < paragraphs:
        body[fact_at] += " " + FACT
    return "# Club handbook\n\n" + "\n\n".join(body)


# -- cutting documents ----------------------------------------------------------------------------


def test_passages_stay_under_the_cap_and_prefer_paragraph_breaks() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "Words that say little but take room. " * 8 for i in range(20))

    passages = chunk(text)

    assert len(passages) > 3
    assert all(estimate_tokens(p) <= CHUNK_MAX_TOKENS for p in passages)
    assert all(p.split(". ")[0].startswith(("Paragraph", "Words")) for p in passages)
    for paragraph in text.split("\n\n"):  # each paragraph whole in some passage
        assert any(paragraph.strip() in p for p in passages)


def test_the_next_passage_repeats_the_end_of_the_one_before() -> None:
    sentences = [f"Sentence number {i} is here to fill the page." for i in range(120)]

    passages = chunk(" ".join(sentences))

    assert len(passages) >= 3
    for before, after in itertools.pairwise(passages):
        shared = [s for s in sentences if s in before and s in after]
        assert shared  # the next passage starts with the last sentences of the one before
        assert before.endswith(shared[-1])
        assert after.startswith(shared[0])
        assert estimate_tokens(" ".join(shared)) <= OVERLAP_TOKENS
    recovered = {s for p in passages for s in sentences if s in p}
    assert recovered == set(sentences)


def test_a_short_document_is_one_passage_with_its_lines_and_quotes_kept() -> None:
    text = '# Title\n\nHe said "stop." Then he left. Why?\n- item one.\n- item two\n\nThe end.'

    assert chunk(text) == [text]
    assert chunk("\r\n\r\n" + text.replace("\n", "\r\n") + "\n\n") == [text]


def test_a_sentence_longer_than_a_passage_is_cut_by_words() -> None:
    words = [f"w{i}" for i in range(1000)]

    passages = chunk(" ".join(words))

    assert all(estimate_tokens(p) <= CHUNK_MAX_TOKENS for p in passages)
    assert [w for p in passages for w in p.split()] == words
    assert chunk("  \n\n  ") == []


def test_passages_fit_the_embedding_models_window(embedder: Any) -> None:
    text = Path(__file__).parents[2].joinpath("README.md").read_text()[:30_000]  # markdown: code, tables

    passages = chunk(text)

    # count_tokens stops at the window (256); a passage that reaches it was cut short.
    counts = [embedder.count_tokens([p]) for p in passages]
    assert sum(c >= embedder.max_tokens for c in counts) <= len(passages) // 10


def scored(tokens: Sequence[int]) -> list[ScoredPassage]:
    return [
        ScoredPassage(Passage(str(i), "t", "c", "d", i, " ".join(["word"] * t), t, 0), 1 - i / 10)
        for i, t in enumerate(tokens)
    ]


def test_the_token_cap_keeps_the_best_that_fit() -> None:
    found = scored([100, 200, 50, 30])

    assert [p.passage.chunk for p in within_tokens(found, 180)] == [0, 2, 3]
    assert [p.passage.chunk for p in within_tokens(found, 0)] == [0, 1, 2, 3]
    (cut,) = within_tokens(scored([100]), 12)
    assert cut.passage.tokens <= 12 < estimate_tokens(" ".join(["word"] * 11))
    assert within_tokens([], 10) == []


# -- the RPCs ---------------------------------------------------------------------------------


class InProcessMiniLM:
    """The real embedding model, called in this process instead of through the Embed RPC."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.down = False

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.down:
            raise EmbeddingUnavailableError("embedding model stopped for this test")
        vectors: list[list[float]] = (await self.embedder.aembed(texts))[0]
        return vectors


@dataclass
class KnowledgeServer:
    target: str
    stub: memory_pb2_grpc.MemoryServiceStub
    embeddings: InProcessMiniLM


@contextlib.asynccontextmanager
async def serving(valkey_url: str, vectors: VectorStore, embeddings: InProcessMiniLM) -> AsyncIterator[KnowledgeServer]:
    """The memory service over real gRPC on a loopback port, and a client of it."""
    store = SessionStore.from_url(valkey_url, 600, 200)
    core = MemoryCore(store, vectors, embeddings, window_turns=20, recall=RecallPolicy(top_k=0))
    spec = ServiceSpec(
        "memory",
        [SERVICE_NAME],
        lambda s: memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(core), s),
        translate_error=dependency_unavailable,
    )
    port = free_port()
    target = f"127.0.0.1:{port}"
    try:
        async with (
            running_server(spec, ServiceSettings(host="127.0.0.1", grpc_port=port, shutdown_grace_s=0.5)),
            insecure_channel(target) as channel,
        ):
            yield KnowledgeServer(target, memory_pb2_grpc.MemoryServiceStub(channel), embeddings)
    finally:
        await vectors.close()
        await store.close()


@pytest.fixture(scope="module")
async def server(
    valkey_url: str, tmp_path_factory: pytest.TempPathFactory, embedder: Any
) -> AsyncIterator[KnowledgeServer]:
    vectors = EdgeVectorStore(tmp_path_factory.mktemp("qdrant") / "shard", optimize_after=0)
    async with serving(valkey_url, vectors, InProcessMiniLM(embedder)) as running:
        yield running


def doc(name: str, text: str) -> memory_pb2.KnowledgeDocument:
    return memory_pb2.KnowledgeDocument(name=name, text=text)


async def add(server: KnowledgeServer, tenant: str, *documents: memory_pb2.KnowledgeDocument) -> Any:
    return await server.stub.AddKnowledge(
        memory_pb2.AddKnowledgeRequest(tenant=tenant, collection="coach", documents=documents)
    )


async def search(server: KnowledgeServer, tenant: str, query: str = QUESTION, **fields: Any) -> Any:
    request = memory_pb2.SearchKnowledgeRequest(tenant=tenant, collection="coach", query=query, **fields)
    return await server.stub.SearchKnowledge(request)


async def failure(call: Any) -> tuple[grpc.StatusCode, str | None, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    error = from_rpc_error(failed.value)
    return error.code, error.param, error.reason


def new_tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:10]}"


async def test_a_fact_only_in_a_document_is_found_for_a_question_about_it(server: KnowledgeServer) -> None:
    tenant = new_tenant()
    added = await add(
        server,
        tenant,
        doc("handbook.md", long_document(fact_at=7)),
        *(doc(f"tip-{i}.txt", text) for i, text in enumerate(FILLER)),
    )
    assert [d.name for d in added.documents] == ["handbook.md", "tip-0.txt", "tip-1.txt", "tip-2.txt", "tip-3.txt"]
    assert added.documents[0].chunks > 1

    found = await search(server, tenant, top_k=3, max_tokens=400)

    assert FACT in found.passages[0].text
    assert found.passages[0].document == "handbook.md"
    assert [p.score for p in found.passages] == sorted((p.score for p in found.passages), reverse=True)
    assert found.tokens == sum(p.tokens for p in found.passages) <= 400

    other = new_tenant()
    assert await failure(search(server, other)) == (grpc.StatusCode.NOT_FOUND, None, "collection_not_found")
    listed = await server.stub.ListKnowledge(memory_pb2.ListKnowledgeRequest(tenant=other))
    assert list(listed.collections) == []


async def test_delete_removes_a_document_then_the_collection(server: KnowledgeServer) -> None:
    tenant = new_tenant()
    await add(server, tenant, doc("handbook.md", long_document(fact_at=3)), doc("tips.txt", "\n\n".join(FILLER)))

    deleted = await server.stub.DeleteKnowledge(
        memory_pb2.DeleteKnowledgeRequest(tenant=tenant, collection="coach", document="handbook.md")
    )

    assert deleted.removed_chunks > 1
    found = await search(server, tenant, top_k=20)
    assert {p.document for p in found.passages} == {"tips.txt"}
    assert not any("Ferncliff" in p.text for p in found.passages)
    again = memory_pb2.DeleteKnowledgeRequest(tenant=tenant, collection="coach", document="handbook.md")
    assert await failure(server.stub.DeleteKnowledge(again)) == (grpc.StatusCode.NOT_FOUND, None, "document_not_found")
    whole = memory_pb2.DeleteKnowledgeRequest(tenant=tenant, collection="coach")
    assert (await server.stub.DeleteKnowledge(whole)).removed_chunks >= 1
    assert await failure(search(server, tenant)) == (grpc.StatusCode.NOT_FOUND, None, "collection_not_found")
    assert await failure(server.stub.DeleteKnowledge(whole)) == (
        grpc.StatusCode.NOT_FOUND,
        None,
        "collection_not_found",
    )


async def test_re_adding_a_shortened_document_leaves_no_stale_passage(server: KnowledgeServer) -> None:
    tenant = new_tenant()
    first = await add(server, tenant, doc("handbook.md", long_document(fact_at=10, paragraphs=14)))
    shorter = await add(server, tenant, doc("handbook.md", long_document(fact_at=-1, paragraphs=2)))

    assert shorter.documents[0].chunks < first.documents[0].chunks
    assert shorter.documents[0].removed_chunks == first.documents[0].chunks - shorter.documents[0].chunks
    found = await search(server, tenant, top_k=20)
    assert len(found.passages) == shorter.documents[0].chunks
    assert not any("Ferncliff" in p.text for p in found.passages)
    listed = await server.stub.ListKnowledge(memory_pb2.ListKnowledgeRequest(tenant=tenant, collection="coach"))
    ((collection,),) = [listed.collections]
    assert (collection.name, collection.chunks) == ("coach", shorter.documents[0].chunks)
    assert [(d.name, d.chunks) for d in collection.documents] == [("handbook.md", shorter.documents[0].chunks)]


def searches(outcome: str) -> float:
    return REGISTRY.get_sample_value("llmmesh_memory_knowledge_searches_total", {"outcome": outcome}) or 0.0


async def test_min_score_and_the_token_cap(server: KnowledgeServer) -> None:
    tenant = new_tenant()
    await add(server, tenant, doc("handbook.md", long_document(fact_at=0)))
    before = {outcome: searches(outcome) for outcome in ("found", "none", "no_collection")}

    capped = await search(server, tenant, top_k=10, max_tokens=30)
    strict = await search(server, tenant, "quantum chromodynamics of gluon fields", min_score=0.9)
    with pytest.raises(grpc.aio.AioRpcError):
        await search(server, new_tenant())

    assert len(capped.passages) == 1
    assert capped.tokens <= 30
    assert list(strict.passages) == []  # the collection exists: nothing was close enough
    assert {outcome: searches(outcome) - count for outcome, count in before.items()} == {
        "found": 1,
        "none": 1,
        "no_collection": 1,
    }


@pytest.mark.parametrize(
    ("request_fields", "param"),
    [
        ({"collection": "bad name!"}, "collection"),
        ({"collection": ""}, "collection"),
        ({"query": "   "}, "query"),
        ({"query": ""}, "query"),
        ({"top_k": 21}, "top_k"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"min_score": 1.5}, "min_score"),
    ],
)
async def test_a_bad_search_names_its_parameter(
    server: KnowledgeServer, request_fields: dict[str, Any], param: str
) -> None:
    fields = {"tenant": "t", "collection": "coach", "query": "q", **request_fields}
    call = server.stub.SearchKnowledge(memory_pb2.SearchKnowledgeRequest(**fields))
    code, got, _ = await failure(call)
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, param)


@pytest.mark.parametrize(
    ("documents", "param"),
    [
        ([], "documents"),
        ([doc("a.md", "  \n ")], "documents[0].text"),
        ([doc("a.md", "text"), doc("a.md", "more")], "documents[1].name"),
        ([doc("", "text")], "documents[0].name"),
    ],
)
async def test_a_bad_add_names_its_parameter(
    server: KnowledgeServer, documents: list[memory_pb2.KnowledgeDocument], param: str
) -> None:
    code, got, _ = await failure(add(server, new_tenant(), *documents))
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, param)


async def test_without_the_embedding_model_add_and_search_are_unavailable(server: KnowledgeServer) -> None:
    tenant = new_tenant()
    await add(server, tenant, doc("tips.txt", FILLER[0]))
    server.embeddings.down = True
    try:
        assert (await failure(add(server, tenant, doc("more.txt", FILLER[1]))))[0] == grpc.StatusCode.UNAVAILABLE
        assert (await failure(search(server, tenant)))[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        server.embeddings.down = False


async def test_with_the_store_down_knowledge_calls_are_unavailable(embedder: Any, valkey_url: str) -> None:
    vectors = ServerVectorStore.from_url(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    async with serving(valkey_url, vectors, InProcessMiniLM(embedder)) as down:
        listing = down.stub.ListKnowledge(memory_pb2.ListKnowledgeRequest(tenant="t"))
        assert (await failure(listing))[0] == grpc.StatusCode.UNAVAILABLE
        searching = down.stub.SearchKnowledge(memory_pb2.SearchKnowledgeRequest(tenant="t", collection="c", query="q"))
        assert (await failure(searching))[0] == grpc.StatusCode.UNAVAILABLE


# -- llmmesh knowledge ------------------------------------------------------------------------


async def llmmesh(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Runs ``llmmesh argv`` (in a thread: it runs its own event loop); exit code, out, err."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_cli_adds_lists_and_deletes(
    server: KnowledgeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = new_tenant()
    handbook = tmp_path / "handbook.md"
    handbook.write_text(long_document(fact_at=5))
    tips = tmp_path / "tips.txt"
    tips.write_text("\n\n".join(FILLER))
    where = ("--memory-target", server.target, "--tenant", tenant)

    code, out, err = await llmmesh(
        capsys, "knowledge", *where, "add", "--collection", "coach", str(handbook), str(tips)
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("added handbook.md: ")
    assert out.splitlines()[-1] == f"collection coach of tenant {tenant}: 2 documents added"
    assert FACT in (await search(server, tenant)).passages[0].text

    code, out, err = await llmmesh(capsys, "knowledge", "list", *where)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["COLLECTION", "DOCUMENT", "PASSAGES", "TOKENS"]
    assert [row.split()[:2] for row in rows] == [["coach", "handbook.md"], ["coach", "tips.txt"]]

    code, out, err = await llmmesh(
        capsys, "knowledge", "delete", *where, "--collection", "coach", "--document", "tips.txt"
    )
    assert code == 0
    assert out.startswith("deleted tips.txt from collection coach (")
    code, out, err = await llmmesh(capsys, "knowledge", "delete", *where, "--collection", "coach")
    assert code == 0
    assert out.startswith("deleted collection coach (")
    code, out, err = await llmmesh(capsys, "knowledge", "list", *where)
    assert (code, out.strip()) == (0, f"no knowledge for tenant {tenant}")

    code, out, err = await llmmesh(capsys, "knowledge", "delete", *where, "--collection", "coach")
    assert code == 1
    assert err == "error: No knowledge collection 'coach' in this tenant.\n"


async def test_cli_refuses_unfit_files_and_a_missing_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    dead = ("--memory-target", f"127.0.0.1:{free_port()}")

    code, _, err = await llmmesh(capsys, "knowledge", *dead, "add", "--collection", "c", str(binary))
    assert (code, err) == (1, f"error: {binary} is not UTF-8 text\n")
    code, _, err = await llmmesh(capsys, "knowledge", *dead, "list")
    assert code == 1
    assert err.startswith(f"error: cannot reach the memory service at {dead[1]}")
    assert "Traceback" not in err
