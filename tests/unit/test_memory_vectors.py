"""The vector store contract, run against both engines: the embedded one (qdrant-edge, in a
temporary folder) and the server one (qdrant-client's local mode standing in for a server).
Vectors are synthetic unit vectors with known cosines to the query; no model is needed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from services.common.errors import InvalidArgumentError
from services.memory.encoding import Encoded
from services.memory.vectors import (
    DocumentInfo,
    EdgeVectorStore,
    MemoryRecord,
    Passage,
    ScoredRecord,
    ServerVectorStore,
    VectorStore,
    VectorStoreUnavailable,
    open_vector_store,
)
from tests.unit.helpers import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")

DIMS = 384
_IDS = uuid.UUID("0b6f4f3e-8c2a-4d61-9a57-3f0e2c1d5b7a")


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIMS)
    return vector / np.linalg.norm(vector)


QUERY = unit(0)


def near(cosine: float, seed: int, query: np.ndarray = QUERY) -> list[float]:
    """A unit vector whose cosine to `query` is `cosine`."""
    other = unit(10_000 + seed)
    other -= other.dot(query) * query
    other /= np.linalg.norm(other)
    vector: list[float] = (cosine * query + np.sqrt(1 - cosine**2) * other).tolist()
    return vector


def rec(
    tenant: str,
    session_id: str,
    seq: int,
    *,
    user: str = "",
    role: str = "user",
    text: str = "",
    created_at: int = 1_700_000_000,
) -> MemoryRecord:
    return MemoryRecord(
        id=str(uuid.uuid5(_IDS, f"{tenant}/{session_id}/{seq}/{role}")),
        tenant=tenant,
        session_id=session_id,
        user=user,
        role=role,
        text=text or f"{session_id} turn {seq} ({role})",
        seq=seq,
        turn_id=f"{session_id}-t{seq}",
        created_at=created_at,
    )


async def put(store: VectorStore, pairs: Sequence[tuple[MemoryRecord, list[float]]]) -> None:
    await store.upsert([r for r, _ in pairs], [v for _, v in pairs])


def ids(found: Sequence[ScoredRecord | MemoryRecord]) -> list[str]:
    return [f.record.id if isinstance(f, ScoredRecord) else f.id for f in found]


@pytest.fixture(params=["edge", "server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    vector_store: VectorStore
    if request.param == "edge":
        vector_store = EdgeVectorStore(tmp_path / "qdrant", DIMS, optimize_after=0)
    else:
        vector_store = ServerVectorStore(AsyncQdrantClient(location=":memory:"), "memories", DIMS)
    try:
        yield vector_store
    finally:
        await vector_store.close()


# -- search ------------------------------------------------------------------------------------


async def test_search_ranks_by_similarity(store: VectorStore) -> None:
    cosines = [0.3, 0.9, 0.1, 0.7, 0.5]
    records = [rec("acme", "s1", i + 1) for i in range(len(cosines))]
    await put(store, [(r, near(c, seed=i + 1)) for i, (r, c) in enumerate(zip(records, cosines, strict=True))])

    found = await store.search("acme", QUERY.tolist(), limit=3)

    assert ids(found) == [records[1].id, records[3].id, records[4].id]
    assert [round(f.score, 4) for f in found] == [0.9, 0.7, 0.5]
    assert found[0].record == records[1]
    assert found[0].vector is None


async def test_search_threshold_keeps_scores_at_or_above_it(store: VectorStore) -> None:
    records = [rec("acme", "s1", i + 1) for i in range(4)]
    await put(
        store, [(r, near(c, seed=i + 1)) for i, (r, c) in enumerate(zip(records, [0.8, 0.6, 0.4, 0.2], strict=True))]
    )
    everything = await store.search("acme", QUERY.tolist(), limit=10)

    above = await store.search("acme", QUERY.tolist(), limit=10, threshold=0.5)
    exactly = await store.search("acme", QUERY.tolist(), limit=10, threshold=everything[2].score)
    just_above = await store.search("acme", QUERY.tolist(), limit=10, threshold=everything[2].score + 5e-7)

    assert ids(above) == [records[0].id, records[1].id]
    assert ids(exactly) == [records[0].id, records[1].id, records[2].id]
    assert ids(just_above) == [records[0].id, records[1].id]


async def test_search_narrows_to_session_and_user(store: VectorStore) -> None:
    alice_1 = rec("acme", "s1", 1, user="alice")
    alice_2 = rec("acme", "s2", 1, user="alice")
    bob_1 = rec("acme", "s1", 2, user="bob")
    other_tenant = rec("globex", "s1", 1, user="alice")
    await put(store, [(r, near(0.5, seed=i)) for i, r in enumerate([alice_1, alice_2, bob_1, other_tenant])])
    query = QUERY.tolist()

    assert sorted(ids(await store.search("acme", query, limit=10))) == sorted([alice_1.id, alice_2.id, bob_1.id])
    assert sorted(ids(await store.search("acme", query, limit=10, session_id="s1"))) == sorted([alice_1.id, bob_1.id])
    assert sorted(ids(await store.search("acme", query, limit=10, user="alice"))) == sorted([alice_1.id, alice_2.id])
    assert ids(await store.search("acme", query, limit=10, session_id="s1", user="alice")) == [alice_1.id]
    assert ids(await store.search("globex", query, limit=10)) == [other_tenant.id]


async def test_search_returns_the_stored_vector_when_asked(store: VectorStore) -> None:
    vector = near(0.6, seed=5)
    await put(store, [(rec("acme", "s1", 1), vector)])

    (found,) = await store.search("acme", QUERY.tolist(), limit=1, with_vectors=True)

    assert found.vector is not None
    assert np.allclose(found.vector, vector, atol=1e-5)


async def test_a_vector_of_the_wrong_size_is_refused(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        await store.upsert([rec("acme", "s1", 1)], [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="dimensions"):
        await store.search("acme", [1.0, 0.0], limit=1)


# -- recall ------------------------------------------------------------------------------------


@pytest.fixture
async def conversation(store: VectorStore) -> dict[str, MemoryRecord]:
    """Tenant acme: alice's session s1 (turns 1-5) and s2, bob's s3, an anonymous s4; and
    alice's s1 in tenant globex. Every memory is close to the query."""
    named = {f"s1-{seq}": rec("acme", "s1", seq, user="alice") for seq in range(1, 6)}
    named |= {
        "s2-1": rec("acme", "s2", 1, user="alice"),
        "s2-2": rec("acme", "s2", 2, user="alice", role="assistant"),
        "s3-1": rec("acme", "s3", 1, user="bob"),
        "s4-1": rec("acme", "s4", 1),
        "globex": rec("globex", "s1", 1, user="alice"),
    }
    await put(store, [(r, near(0.9 - i * 0.01, seed=i + 10)) for i, r in enumerate(named.values())])
    return named


async def test_recall_takes_earlier_turns_and_the_users_other_sessions(
    store: VectorStore, conversation: dict[str, MemoryRecord]
) -> None:
    found = await store.recall(
        "acme", QUERY.tolist(), session_id="s1", before_seq=4, user="alice", limit=50, threshold=0.0
    )

    expected = ["s1-1", "s1-2", "s1-3", "s2-1", "s2-2"]  # not s1 turns 4-5, bob, the anonymous s4, globex
    assert ids(found) == [conversation[name].id for name in expected]  # best first: cosines fall in that order
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)


async def test_recall_without_user_stays_in_the_session(
    store: VectorStore, conversation: dict[str, MemoryRecord]
) -> None:
    # The anonymous session s4 has user "" too: an empty user never reaches other sessions.
    found = await store.recall("acme", QUERY.tolist(), session_id="s1", before_seq=3, user="", limit=50, threshold=0.0)

    assert ids(found) == [conversation["s1-1"].id, conversation["s1-2"].id]


async def test_recall_of_an_anonymous_session_sees_only_itself(
    store: VectorStore, conversation: dict[str, MemoryRecord]
) -> None:
    found = await store.recall("acme", QUERY.tolist(), session_id="s4", before_seq=9, user="", limit=50, threshold=0.0)

    assert ids(found) == [conversation["s4-1"].id]


async def test_recall_applies_limit_and_threshold(store: VectorStore) -> None:
    records = [rec("acme", "s1", seq, user="alice") for seq in range(1, 6)]
    await put(
        store,
        [(r, near(c, seed=seq)) for seq, (r, c) in enumerate(zip(records, [0.2, 0.9, 0.5, 0.7, 0.3], strict=True))],
    )
    query = QUERY.tolist()

    top = await store.recall("acme", query, session_id="s1", before_seq=9, user="alice", limit=2, threshold=0.0)
    above = await store.recall("acme", query, session_id="s1", before_seq=9, user="alice", limit=9, threshold=0.45)

    assert ids(top) == [records[1].id, records[3].id]
    assert ids(above) == [records[1].id, records[3].id, records[2].id]


# -- listing -----------------------------------------------------------------------------------


async def test_list_pages_through_a_session_in_time_then_id_order(store: VectorStore) -> None:
    # Seven memories over four seconds, several in the same second; another session around them.
    times = [100, 101, 101, 101, 102, 103, 103]
    records = [rec("acme", "s1", i + 1, created_at=t) for i, t in enumerate(times)]
    noise = [rec("acme", "s2", i + 1, created_at=t) for i, t in enumerate(times)]
    await put(store, [(r, near(0.5, seed=i)) for i, r in enumerate(reversed(records + noise))])
    expected = sorted(records, key=lambda r: (r.created_at, r.id))

    pages: list[list[MemoryRecord]] = []
    more: list[bool] = []
    after = ""
    for _ in range(5):
        page, has_more = await store.list("acme", session_id="s1", limit=3, after=after)
        pages.append(page)
        more.append(has_more)
        if not has_more:
            break
        after = page[-1].id

    assert [len(p) for p in pages] == [3, 3, 1]
    assert more == [True, True, False]
    assert [r for p in pages for r in p] == expected


async def test_list_by_user_spans_sessions(store: VectorStore) -> None:
    mine = [rec("acme", f"s{i}", 1, user="alice", created_at=200 + i) for i in range(4)]
    theirs = [rec("acme", "s9", 1, user="bob", created_at=100), rec("globex", "s1", 1, user="alice", created_at=100)]
    await put(store, [(r, near(0.5, seed=i)) for i, r in enumerate(mine + theirs)])

    assert await store.list("acme", user="alice", limit=10) == (mine, False)
    assert await store.list("acme", user="alice", limit=4) == (mine, False)
    assert await store.list("acme", user="alice", limit=3) == (mine[:3], True)
    assert await store.list("acme", user="alice", limit=3, after=mine[2].id) == (mine[3:], False)


async def test_list_refuses_an_unknown_cursor_and_an_unscoped_listing(store: VectorStore) -> None:
    first = rec("acme", "s1", 1)
    elsewhere = rec("acme", "s2", 1)
    await put(store, [(first, near(0.5, seed=1)), (elsewhere, near(0.5, seed=2))])

    with pytest.raises(InvalidArgumentError, match="continue after"):
        await store.list("acme", session_id="s1", after=str(uuid.uuid4()))
    with pytest.raises(InvalidArgumentError, match="continue after"):
        await store.list("acme", session_id="s1", after=elsewhere.id)  # not in this listing
    with pytest.raises(InvalidArgumentError, match="continue after"):
        await store.list("globex", session_id="s1", after=first.id)  # another tenant's
    with pytest.raises(ValueError, match="session_id or a user"):
        await store.list("acme")


# -- get, delete, tenants --------------------------------------------------------------------


async def test_another_tenant_can_neither_get_nor_delete(store: VectorStore) -> None:
    records = [rec("acme", "s1", seq) for seq in (1, 2)]
    await put(store, [(r, near(0.5, seed=i)) for i, r in enumerate(records)])
    record_ids = [r.id for r in records]

    assert await store.get("globex", record_ids) == []
    assert await store.delete("globex", record_ids) == 0
    assert await store.get("acme", [*record_ids, "not-a-uuid"]) == records
    assert await store.count("acme") == 2


async def test_delete_counts_what_existed(store: VectorStore) -> None:
    records = [rec("acme", "s1", seq) for seq in (1, 2, 3)]
    await put(store, [(r, near(0.5, seed=i)) for i, r in enumerate(records)])

    removed = await store.delete("acme", [records[0].id, records[0].id, str(uuid.uuid4()), "not-a-uuid"])

    assert removed == 1
    assert await store.get("acme", [r.id for r in records]) == records[1:]
    assert await store.delete("acme", [records[0].id]) == 0


async def test_upsert_never_replaces_another_tenants_point(store: VectorStore) -> None:
    original = rec("acme", "s1", 1, text="acme's own words")
    await put(store, [(original, near(0.5, seed=1))])
    intruder = replace(original, tenant="globex", text="overwritten")

    await put(store, [(intruder, near(0.9, seed=2))])

    assert await store.get("acme", [original.id]) == [original]
    assert await store.get("globex", [original.id]) == []


async def test_delete_session_removes_only_that_session_of_that_tenant(store: VectorStore) -> None:
    gone = [rec("acme", "s1", seq) for seq in (1, 2, 3)]
    kept = [rec("acme", "s2", 1), rec("globex", "s1", 1)]
    await put(store, [(r, near(0.5, seed=i)) for i, r in enumerate(gone + kept)])

    assert await store.delete_session("acme", "s1") == 3
    assert await store.delete_session("acme", "s1") == 0
    assert await store.count("acme") == 1
    assert await store.count("globex") == 1
    assert await store.get("acme", [r.id for r in gone]) == []


async def test_upsert_of_the_same_id_keeps_one_point(store: VectorStore) -> None:
    first = rec("acme", "s1", 1, text="first wording")
    second = replace(first, text="second wording")

    await put(store, [(first, near(0.5, seed=1))])
    await put(store, [(second, near(0.8, seed=1))])

    assert await store.count() == 1
    assert await store.get("acme", [first.id]) == [second]
    (found,) = await store.search("acme", QUERY.tolist(), limit=5)
    assert round(found.score, 4) == 0.8


async def test_count_per_tenant_and_in_all(store: VectorStore) -> None:
    records = [rec("acme", "s1", 1), rec("acme", "s1", 2), rec("globex", "s1", 1)]
    await put(store, [(r, near(0.5, seed=i)) for i, r in enumerate(records)])

    assert (await store.count("acme"), await store.count("globex"), await store.count()) == (2, 1, 3)
    assert await store.healthy() is True


# -- knowledge: passages of documents, apart from the memories ------------------------------------


def passages(
    tenant: str, collection: str, document: str, count: int, *, added_at: int = 1_700_000_000
) -> list[Passage]:
    return [
        Passage(
            id=str(uuid.uuid5(_IDS, f"{tenant}/{collection}/{document}/{chunk}")),
            tenant=tenant,
            collection=collection,
            document=document,
            chunk=chunk,
            text=f"{document} part {chunk}",
            tokens=10 + chunk,
            added_at=added_at,
        )
        for chunk in range(count)
    ]


async def add(store: VectorStore, found: list[Passage], cosines: Sequence[float], seed: int = 0) -> int:
    first = found[0] if found else None
    assert first is not None
    vectors = [near(c, seed=seed + i) for i, c in enumerate(cosines)]
    return await store.replace_document(first.tenant, first.collection, first.document, found, vectors)


async def test_passages_rank_within_one_collection_of_one_tenant(store: VectorStore) -> None:
    guide = passages("acme", "guide", "intro.md", 3)
    await add(store, guide, [0.4, 0.9, 0.6])
    await add(store, passages("acme", "other", "intro.md", 1), [0.99], seed=10)
    await add(store, passages("globex", "guide", "intro.md", 1), [0.99], seed=20)

    found = await store.search_passages("acme", "guide", QUERY.tolist(), limit=2)
    above = await store.search_passages("acme", "guide", QUERY.tolist(), limit=9, threshold=0.5)

    assert [f.passage for f in found] == [guide[1], guide[2]]
    assert [round(f.score, 4) for f in found] == [0.9, 0.6]
    assert [f.passage.id for f in above] == [guide[1].id, guide[2].id]
    assert await store.search_passages("acme", "nothing", QUERY.tolist(), limit=2) == []


async def test_passages_and_memories_never_meet(store: VectorStore) -> None:
    memory = rec("acme", "s1", 1)
    await put(store, [(memory, near(0.5, seed=1))])
    guide = passages("acme", "guide", "intro.md", 2)
    await add(store, guide, [0.9, 0.8])

    assert ids(await store.search("acme", QUERY.tolist(), limit=10)) == [memory.id]
    assert await store.count("acme") == 1
    assert await store.get("acme", [p.id for p in guide]) == []
    assert await store.delete("acme", [p.id for p in guide]) == 0
    assert [f.passage.id for f in await store.search_passages("acme", "guide", QUERY.tolist(), limit=10)] == [
        p.id for p in guide
    ]


async def test_re_adding_a_shorter_document_leaves_no_stale_chunk(store: VectorStore) -> None:
    await add(store, passages("acme", "guide", "intro.md", 5), [0.5] * 5)
    await add(store, passages("acme", "guide", "other.md", 2), [0.5] * 2, seed=10)
    shorter = [
        replace(p, text=f"new {p.text}", added_at=1_800_000_000) for p in passages("acme", "guide", "intro.md", 2)
    ]

    removed = await add(store, shorter, [0.7, 0.6])

    assert removed == 3
    found = await store.search_passages("acme", "guide", QUERY.tolist(), limit=10)
    assert sorted(f.passage.text for f in found) == [
        "new intro.md part 0",
        "new intro.md part 1",
        "other.md part 0",
        "other.md part 1",
    ]
    assert await store.documents("acme", "guide") == [
        DocumentInfo("guide", "intro.md", chunks=2, tokens=21, added_at=1_800_000_000),
        DocumentInfo("guide", "other.md", chunks=2, tokens=21, added_at=1_700_000_000),
    ]


async def test_documents_are_listed_per_tenant_by_collection_then_name(store: VectorStore) -> None:
    await add(store, passages("acme", "b-coll", "z.md", 2), [0.5] * 2)
    await add(store, passages("acme", "a-coll", "y.md", 1), [0.5])
    await add(store, passages("acme", "b-coll", "a.txt", 3), [0.5] * 3)
    await add(store, passages("globex", "a-coll", "secret.md", 1), [0.5])

    listed = await store.documents("acme")

    assert [(d.collection, d.document, d.chunks) for d in listed] == [
        ("a-coll", "y.md", 1),
        ("b-coll", "a.txt", 3),
        ("b-coll", "z.md", 2),
    ]
    assert [d.document for d in await store.documents("acme", "b-coll")] == ["a.txt", "z.md"]
    assert await store.documents("acme", "none") == []
    assert [d.document for d in await store.documents("globex")] == ["secret.md"]


async def test_listing_reads_past_one_page(store: VectorStore) -> None:
    many = passages("acme", "big", "long.md", 1100)
    await store.replace_document("acme", "big", "long.md", many, [unit(i).tolist() for i in range(len(many))])

    (listed,) = await store.documents("acme", "big")

    assert (listed.chunks, listed.tokens) == (1100, sum(p.tokens for p in many))


async def test_delete_passages_of_a_document_or_a_collection(store: VectorStore) -> None:
    await add(store, passages("acme", "guide", "a.md", 2), [0.5] * 2)
    await add(store, passages("acme", "guide", "b.md", 3), [0.5] * 3)
    await add(store, passages("acme", "kept", "a.md", 1), [0.5])
    await add(store, passages("globex", "guide", "a.md", 1), [0.5])

    assert await store.delete_passages("globex", "guide", "b.md") == 0
    assert await store.delete_passages("acme", "guide", "a.md") == 2
    assert [d.document for d in await store.documents("acme", "guide")] == ["b.md"]
    assert await store.delete_passages("acme", "guide") == 3
    assert await store.delete_passages("acme", "guide") == 0
    assert await store.search_passages("acme", "guide", QUERY.tolist(), limit=5) == []
    assert [(d.collection, d.document) for d in await store.documents("acme")] == [("kept", "a.md")]
    assert [d.document for d in await store.documents("globex")] == ["a.md"]


async def test_a_passage_never_replaces_another_tenants(store: VectorStore) -> None:
    (original,) = passages("acme", "guide", "a.md", 1)
    await add(store, [original], [0.5])

    await add(store, [replace(original, tenant="globex", text="overwritten")], [0.9])

    (found,) = await store.search_passages("acme", "guide", QUERY.tolist(), limit=5)
    assert found.passage == original
    assert await store.search_passages("globex", "guide", QUERY.tolist(), limit=5) == []


async def test_passages_must_be_the_chunks_of_the_named_document(store: VectorStore) -> None:
    two = passages("acme", "guide", "a.md", 2)
    with pytest.raises(ValueError, match="chunks 0"):
        await store.replace_document("acme", "guide", "a.md", two[1:], [near(0.5, seed=1)])
    with pytest.raises(ValueError, match="chunks 0"):
        await store.replace_document("acme", "guide", "b.md", two, [near(0.5, seed=1)] * 2)
    with pytest.raises(ValueError, match="vectors"):
        await store.replace_document("acme", "guide", "a.md", two, [near(0.5, seed=1)])


# -- the embedded engine -------------------------------------------------------------------------


# -- hybrid: dense and lexical -------------------------------------------------------------


async def test_a_shared_rare_word_ranks_a_memory_the_vectors_alone_would_miss(store: VectorStore) -> None:
    cello = rec("acme", "s1", 1, user="alice", text="Finally got my cello back from the repair shop")
    others = [rec("acme", "s1", seq, user="alice", text=f"We talked about the weather, day {seq}") for seq in (2, 3, 4)]
    await put(store, [(cello, near(0.05, seed=1))] + [(r, near(0.6, seed=r.seq)) for r in others])

    assert ids(await store.search("acme", QUERY.tolist(), limit=1))[0] != cello.id  # dense alone
    found = await store.search("acme", QUERY.tolist(), limit=4, text="Is the cello fixed?")
    assert ids(found)[0] == cello.id
    assert set(ids(found)) == {cello.id, *ids(others)}  # the dense candidates still take part


async def test_hybrid_floors_keep_out_what_is_neither_close_nor_worded_alike(store: VectorStore) -> None:
    close = rec("acme", "s1", 1, text="A sunny afternoon at the lake")
    worded = rec("acme", "s1", 2, text="The cello needs new strings")
    neither = rec("acme", "s1", 3, text="Dinner plans for Friday")
    await put(store, [(close, near(0.7, seed=1)), (worded, near(0.0, seed=2)), (neither, near(0.1, seed=3))])

    # Over the tenant: close by cosine, or sharing a word (BM25).
    found = await store.search("acme", QUERY.tolist(), limit=10, text="cello", threshold=0.5)
    assert sorted(ids(found)) == sorted([close.id, worded.id])

    # Within a session: close by a clause, or by the words (late interaction, floor per word).
    word = unit(7)
    encoded = {
        close.id: Encoded(near(0.7, seed=1), [near(0.7, seed=1)], [near(0.1, seed=11, query=word)]),
        worded.id: Encoded(near(0.0, seed=2), [near(0.0, seed=2)], [near(0.8, seed=12, query=word)]),
        neither.id: Encoded(near(0.1, seed=3), [near(0.1, seed=3)], [near(0.1, seed=13, query=word)]),
    }
    records = [close, worded, neither]
    await store.upsert(records, [encoded[r.id] for r in records])
    probe = Encoded(QUERY.tolist(), [QUERY.tolist()], [word.tolist()])
    recalled = await store.recall(
        "acme", probe, session_id="s1", before_seq=9, user="", limit=10, threshold=0.5, word_floor=0.6
    )
    assert sorted(ids(recalled)) == sorted([close.id, worded.id])
    everything = await store.recall("acme", probe, session_id="s1", before_seq=9, user="", limit=10, threshold=0.0)
    assert ids(everything)[0] in (close.id, worded.id)
    assert len(everything) == 3


async def test_a_word_most_memories_hold_does_not_pass_the_lexical_floor(store: VectorStore) -> None:
    """The speaker's own name is in half of a transcript's lines: BM25 scores it about 1, a rare
    word far more; with the floor, only the rare word's memory enters the lexical ranking."""
    lines = [rec("acme", "s1", seq, text=f"Maya: line {seq} about the weather") for seq in range(1, 11)]
    cello = rec("acme", "s1", 11, text="Maya: the cello is back from the shop")
    await put(store, [(r, near(0.0, seed=r.seq)) for r in [*lines, cello]])

    loose = await store.search("acme", QUERY.tolist(), limit=20, text="Maya cello", threshold=0.99)
    assert len(loose) == 11  # every line shares the name
    floored = await store.search("acme", QUERY.tolist(), limit=20, text="Maya cello", threshold=0.99, lexical_floor=1.5)
    assert ids(floored) == [cello.id]


async def test_the_lexical_side_stays_within_the_tenant_and_forgets_what_is_deleted(store: VectorStore) -> None:
    ours = rec("acme", "s1", 1, user="alice", text="My passport number ends in 4417")
    theirs = rec("globex", "s1", 1, user="alice", text="My passport number ends in 4417")
    await put(store, [(ours, near(0.0, seed=1)), (theirs, near(0.0, seed=2))])

    assert ids(await store.search("acme", QUERY.tolist(), limit=5, text="passport 4417", threshold=0.9)) == [ours.id]
    await store.delete("acme", [ours.id])
    assert await store.search("acme", QUERY.tolist(), limit=5, text="passport 4417", threshold=0.9) == []
    assert ids(await store.search("globex", QUERY.tolist(), limit=5, text="passport", threshold=0.9)) == [theirs.id]
    await store.delete_session("globex", "s1")
    assert await store.search("globex", QUERY.tolist(), limit=5, text="passport", threshold=0.9) == []


async def test_a_shard_without_lexical_vectors_gets_them_when_opened(tmp_path: Path) -> None:
    """A shard an earlier release wrote (dense vectors only) is copied into a new generation
    with the lexical vectors computed from the stored texts."""
    import qdrant_edge as qe

    from services.memory.vectors import _payload

    old = tmp_path / "gen-000001"
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIMS, distance=qe.Distance.Cosine))
    shard = qe.EdgeShard.create(str(old), config)
    cello = rec("acme", "s1", 1, user="alice", text="Finally got my cello back")
    weather = rec("acme", "s1", 2, user="alice", text="Rainy again today")
    shard.update(
        qe.UpdateOperation.upsert_points(
            [
                qe.Point(cello.id, near(0.0, seed=1), _payload(cello)),
                qe.Point(weather.id, near(0.5, 2), _payload(weather)),
            ]
        )
    )
    shard.flush()
    shard.close()
    (tmp_path / "CURRENT").write_text("gen-000001\n")

    store = EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    try:
        assert live_shard(tmp_path) == "gen-000002"
        assert shard_folders(tmp_path) == ["gen-000002"]
        assert await store.get("acme", [cello.id, weather.id]) == [cello, weather]
        found = await store.search("acme", QUERY.tolist(), limit=5, text="cello", threshold=0.9)
        assert ids(found) == [cello.id]
        (vector_found,) = await store.search("acme", QUERY.tolist(), limit=1, with_vectors=True)
        assert vector_found.vector is not None
        assert len(vector_found.vector) == DIMS
    finally:
        await store.close()


async def test_edge_store_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    records = [rec("acme", "s1", seq, user="alice") for seq in (1, 2, 3)]
    first = EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    await put(first, [(r, near(0.9 - seq * 0.1, seed=seq)) for seq, r in enumerate(records)])

    guide = passages("acme", "guide", "a.md", 2)
    await add(first, guide, [0.9, 0.8])
    await first.close()

    again = EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    try:
        assert [f.passage for f in await again.search_passages("acme", "guide", QUERY.tolist(), limit=5)] == guide
        assert await again.get("acme", [r.id for r in records]) == records
        assert ids(await again.search("acme", QUERY.tolist(), limit=5)) == [r.id for r in records]
        assert await again.count() == 3
    finally:
        await again.close()
    assert await again.healthy() is False


async def test_one_folder_serves_one_store_at_a_time(tmp_path: Path) -> None:
    first = EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    try:
        with pytest.raises(RuntimeError, match="in use"):
            EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    finally:
        await first.close()
    second = EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    await second.close()


def live_shard(path: Path) -> str:
    return (path / "CURRENT").read_text().strip()


def shard_folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("gen-*"))


async def until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# An engine that indexes from a few hundred points on (its default waits for 10 MB of vectors).
SMALL_INDEX_KB = 100


async def test_optimize_keeps_the_writes_made_while_it_builds(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path, DIMS, optimize_after=0, indexing_threshold_kb=SMALL_INDEX_KB)
    before = [rec("acme", f"s{i % 7}", i + 1) for i in range(300)]
    await put(store, [(r, unit(i + 1).tolist()) for i, r in enumerate(before)])
    shard = live_shard(tmp_path)
    try:
        build = asyncio.create_task(store.optimize())
        await until(lambda: store._journal is not None)  # copied: the child process indexes the copy
        during = [rec("acme", "late", i + 1) for i in range(20)]
        for i, r in enumerate(during):
            await put(store, [(r, unit(1000 + i).tolist())])
        removed = await store.delete_session("acme", "s0")
        assert store.optimizing  # the writes above did land while the copy was being indexed

        assert await build is True
        assert live_shard(tmp_path) != shard
        assert shard_folders(tmp_path) == [live_shard(tmp_path)]
        kept = [r for r in before if r.session_id != "s0"] + during
        assert removed == sum(r.session_id == "s0" for r in before)
        assert await store.count("acme") == len(kept)
        assert await store.get("acme", [r.id for r in kept]) == kept
        (best,) = await store.search("acme", unit(1005).tolist(), limit=1)  # written during the build
        assert best.record == during[5]
    finally:
        await store.close()

    reopened = EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    try:
        assert await reopened.count("acme") == len(kept)
    finally:
        await reopened.close()


async def test_an_index_build_starts_by_itself_after_enough_writes(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path, DIMS, optimize_after=200, indexing_threshold_kb=SMALL_INDEX_KB)
    shard = live_shard(tmp_path)
    try:
        await put(store, [(rec("acme", "s1", i + 1), unit(i).tolist()) for i in range(150)])
        assert not store.optimizing
        await put(store, [(rec("acme", "s2", i + 1), unit(500 + i).tolist()) for i in range(100)])
        assert store.optimizing
        await until(lambda: not store.optimizing)
        assert live_shard(tmp_path) != shard
        assert await store.count("acme") == 250
    finally:
        await store.close()


async def test_close_during_a_build_stops_it_and_keeps_the_data(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path, DIMS, optimize_after=0, indexing_threshold_kb=SMALL_INDEX_KB)
    await put(store, [(rec("acme", "s1", i + 1), unit(i).tolist()) for i in range(300)])
    shard = live_shard(tmp_path)
    build = asyncio.create_task(store.optimize())
    await until(lambda: store._journal is not None)  # the child process is at work

    await store.close()

    with pytest.raises(asyncio.CancelledError):
        await build
    assert live_shard(tmp_path) == shard
    assert shard_folders(tmp_path) == [shard]
    reopened = EdgeVectorStore(tmp_path, DIMS, optimize_after=0)
    try:
        assert await reopened.count("acme") == 300
    finally:
        await reopened.close()


# -- a Qdrant server that is not there -----------------------------------------------------------


async def test_an_unreachable_server_raises_unavailable_quickly() -> None:
    store = ServerVectorStore.from_url(f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(VectorStoreUnavailable):
            await store.search("acme", QUERY.tolist(), limit=5)
        with pytest.raises(VectorStoreUnavailable):
            await store.upsert([rec("acme", "s1", 1)], [QUERY.tolist()])
        assert await store.healthy() is False
        assert time.monotonic() - started < 2.0
    finally:
        await store.close()


async def test_a_server_that_never_answers_times_out_as_unavailable() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = ServerVectorStore.from_url(f"http://127.0.0.1:{port}", timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(VectorStoreUnavailable, match="did not answer"):
            await store.count("acme")
        assert time.monotonic() - started < 1.5
        assert accepted  # it did connect: the timeout, not a refusal, ended the call
    finally:
        await store.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_factory_picks_the_engine_by_url(tmp_path: Path) -> None:
    embedded = open_vector_store("", tmp_path / "qdrant")
    remote = open_vector_store("https://127.0.0.1:6333", tmp_path / "unused", api_key="secret")
    try:
        assert isinstance(embedded, EdgeVectorStore)
        assert isinstance(remote, ServerVectorStore)
        assert not (tmp_path / "unused").exists()
    finally:
        await embedded.close()
        await remote.close()
