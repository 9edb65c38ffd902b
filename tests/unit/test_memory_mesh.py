"""Memory through the whole in-process mesh (real gRPC, real valkey, embedded Qdrant, the real
embedding model and SmolLM2's real tokenizer; only generation is the instant backend):
conversations that never overflow, a stable prompt prefix, appends after the answer,
erasure, tenant isolation, and what happens when Redis or the vector store is away."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from llmmesh.memory.v1 import memory_pb2
from services.gateway.pipeline import APPENDS
from services.inference.embedder import Embedder
from services.inference.tokenizer import ChatTokenizer
from services.memory.embedding import Embeddings
from services.memory.indexer import Indexer
from services.memory.store import INDEX_STREAM, tag
from services.memory.vectors import VectorStoreUnavailable
from tests.unit.helpers import free_port
from tests.unit.mesh import Mesh, MeshOptions, in_process_mesh

WORDS = [
    *("river", "mountain", "copper", "lantern", "orchard", "violin", "harbor", "meadow", "falcon", "granite"),
    *("velvet", "compass", "thunder", "saffron", "glacier", "marble", "cedar", "canyon", "ember", "quartz"),
]


def long_text(seed: int, words: int = 900) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


async def test_thirty_long_turns_never_overflow_and_keep_their_prefix(mesh: Mesh) -> None:
    sid = session()
    context_length, max_tokens = 8192, 4
    previous: list[dict[str, Any]] = []
    trims = 0
    for turn in range(30):
        text = f"Turn {turn}. " + long_text(turn)
        response = await mesh.chat(text, session_id=sid, max_tokens=max_tokens)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] + max_tokens <= context_length
        prompt = mesh.backend.last_prompt
        assert prompt[-1] == {"role": "user", "content": text}  # the newest message always reaches the model
        if previous and prompt[: len(previous) - 1] != previous[:-1]:
            trims += 1
        previous = prompt
        await mesh.settle()
    # ~1,200 tokens a turn: the window fills every few turns and is then halved in one step.
    assert 1 <= trims <= 10


async def test_the_window_moves_in_steps_not_turn_by_turn(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    options = MeshOptions(window_turns=6, indexer=False)
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        sid = session()
        history_sizes = []
        for turn in range(14):
            assert (await mesh.chat(f"short message {turn}", session_id=sid)).status_code == 200
            history_sizes.append(sum(1 for m in mesh.backend.last_prompt if m["role"] == "assistant"))
            await mesh.settle()
        # Never more than the window; when it is full it drops half of it at once.
        assert max(history_sizes) == 6
        assert history_sizes[:7] == [0, 1, 2, 3, 4, 5, 6]
        assert history_sizes[7] == 4


async def test_new_messages_that_alone_do_not_fit_are_context_length_exceeded(mesh: Mesh) -> None:
    sid = session()
    assert (await mesh.chat("hello", session_id=sid)).status_code == 200
    response = await mesh.chat(long_text(7, words=9000), session_id=sid)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_the_answer_does_not_wait_for_or_fail_with_the_append(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder, monkeypatch: Any
) -> None:
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, MeshOptions()) as mesh:

        async def broken_append(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("fault injected by the test")

        monkeypatch.setattr(mesh.core, "append", broken_append)
        monkeypatch.setattr(mesh.pipeline._settings, "append_retry_s", 0.5)
        failed_before = APPENDS.labels("failed")._value.get()

        response = await mesh.chat("remember nothing", session_id=session())

        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"]
        await mesh.settle()
        assert APPENDS.labels("failed")._value.get() == failed_before + 1


async def test_every_key_of_a_session_expires(mesh: Mesh, redis_client: aioredis.Redis) -> None:
    sid = session()
    assert (await mesh.chat("a fact about copper", session_id=sid)).status_code == 200
    await mesh.settle()
    keys = [k async for k in redis_client.scan_iter(match=f"*{tag('default', sid)}*")]
    keys += [k async for k in redis_client.scan_iter(match="llmmesh:sessions:*")]

    assert len(keys) >= 4  # session, history, turn marker, the tenant's session index
    for key in keys:
        assert await redis_client.ttl(key) > 0, key


async def test_a_memory_says_which_turn_of_its_session_it_comes_from(mesh: Mesh) -> None:
    sid = session()
    for text in ("The weather is grey today.", "My locker combination is 4-8-15-16."):
        assert (await mesh.chat(text, session_id=sid)).status_code == 200
    await mesh.settle()

    found = await mesh.http.post("/v1/memories/search", json={"query": "locker combination", "session_id": sid})
    top = found.json()["data"][0]
    assert (top["text"], top["seq"], top["role"]) == ("My locker combination is 4-8-15-16.", 2, "user")
    listed = (await mesh.http.get("/v1/memories", params={"session_id": sid})).json()["data"]
    assert sorted({m["seq"] for m in listed}) == [1, 2]


async def test_deleting_a_session_erases_it_everywhere(mesh: Mesh, redis_client: aioredis.Redis) -> None:
    sid = session()
    planted = "My locker combination is 4-8-15-16."
    assert (await mesh.chat(planted, session_id=sid)).status_code == 200
    await mesh.settle()
    found = await mesh.http.post("/v1/memories/search", json={"query": "locker combination", "session_id": sid})
    assert [m["text"] for m in found.json()["data"]][:1] == [planted]

    deleted = await mesh.http.delete(f"/v1/sessions/{sid}")

    assert deleted.json() == {"id": sid, "object": "session.deleted", "deleted": True}
    assert (await mesh.http.get(f"/v1/sessions/{sid}")).status_code == 404
    found = await mesh.http.post("/v1/memories/search", json={"query": "locker combination"})
    assert planted not in [m["text"] for m in found.json()["data"]]
    listed = await mesh.http.get("/v1/memories", params={"session_id": sid})
    assert listed.json()["data"] == []
    assert [k async for k in redis_client.scan_iter(match=f"*{tag('default', sid)}*")] == [
        f"llmmesh:deleted:{tag('default', sid)}"
    ]
    queued: Any = await redis_client.xrange(INDEX_STREAM)
    assert all(fields.get("session_id") != sid for _, fields in queued)
    sessions = (await mesh.http.get("/v1/sessions", params={"limit": 100})).json()["data"]
    assert sid not in [s["id"] for s in sessions]


async def test_a_turn_in_flight_when_its_session_is_deleted_is_not_stored(mesh: Mesh) -> None:
    sid = session()
    assert (await mesh.chat("first", session_id=sid)).status_code == 200
    await mesh.settle()
    started_before_delete = 1  # any time before the deletion
    assert (await mesh.http.delete(f"/v1/sessions/{sid}")).status_code == 200

    stub = mesh.pipeline._clients.memory
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Append(
            memory_pb2.AppendRequest(
                tenant="default", session_id=sid, turn_id="late", started_at_ms=started_before_delete
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await mesh.http.get(f"/v1/sessions/{sid}")).status_code == 404


async def test_deleting_one_memory_removes_it_from_search_listing_and_history(mesh: Mesh) -> None:
    sid = session()
    planted = "My passport number is X1234567."
    assert (await mesh.chat(planted, session_id=sid)).status_code == 200
    await mesh.settle()
    memories = (await mesh.http.get("/v1/memories", params={"session_id": sid})).json()["data"]
    (target,) = [m for m in memories if m["text"] == planted]

    assert (await mesh.http.delete(f"/v1/memories/{target['id']}")).json()["deleted"] is True

    found = await mesh.http.post("/v1/memories/search", json={"query": "passport number", "session_id": sid})
    assert planted not in [m["text"] for m in found.json()["data"]]
    history = (await mesh.http.get(f"/v1/sessions/{sid}")).json()["messages"]
    assert planted not in [m["content"] for m in history]
    assert (await mesh.http.delete(f"/v1/memories/{target['id']}")).status_code == 404


async def test_one_tenant_cannot_touch_another_tenants_data(mesh: Mesh) -> None:
    sid = session()
    assert (await mesh.chat("Tenant A's secret is blue-falcon.", session_id=sid)).status_code == 200
    await mesh.settle()
    memory = mesh.pipeline._clients.memory
    memories = (await memory.ListMemories(memory_pb2.ListMemoriesRequest(tenant="default", session_id=sid))).memories
    assert memories

    other = f"tenant-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await memory.GetSession(memory_pb2.GetSessionRequest(tenant=other, session_id=sid))
    assert denied.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(tenant=other, memory_id=memories[0].id))
    assert denied.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await memory.ListMemories(memory_pb2.ListMemoriesRequest(tenant=other, session_id=sid))
    searched = await memory.SearchMemories(memory_pb2.SearchMemoriesRequest(tenant=other, query="secret"))
    sessions = await memory.ListSessions(memory_pb2.ListSessionsRequest(tenant=other, limit=100))
    context = await memory.GetContext(
        memory_pb2.GetContextRequest(tenant=other, session_id=sid, query="what is the secret?")
    )
    deleted = await memory.DeleteSession(memory_pb2.DeleteSessionRequest(tenant=other, session_id=sid))
    assert (list(listed.memories), list(searched.memories), list(sessions.sessions)) == ([], [], [])
    assert (list(context.window), list(context.recalled), deleted.deleted) == ([], [], False)
    # ... and tenant A still has everything.
    assert (await mesh.http.get(f"/v1/sessions/{sid}")).json()["turns"] == 1


async def test_sessions_can_be_created_listed_and_updated(mesh: Mesh) -> None:
    created = (await mesh.http.post("/v1/sessions", json={"system_prompt": "Be terse.", "metadata": {"k": "v"}})).json()
    sid = created["id"]
    assert created["object"] == "session"
    assert created["system_prompt"] == "Be terse."

    assert (await mesh.chat("hello", session_id=sid)).status_code == 200
    assert mesh.backend.last_prompt[0] == {"role": "system", "content": "Be terse."}
    patched = (await mesh.http.patch(f"/v1/sessions/{sid}", json={"system_prompt": "Be kind."})).json()
    assert patched["system_prompt"] == "Be kind."
    assert patched["metadata"] == {"k": "v"}
    await mesh.settle()
    assert (await mesh.chat("again", session_id=sid)).status_code == 200
    assert mesh.backend.last_prompt[0] == {"role": "system", "content": "Be kind."}

    listed = (await mesh.http.get("/v1/sessions", params={"limit": 1})).json()
    assert listed["object"] == "list"
    assert len(listed["data"]) == 1
    assert (await mesh.http.post("/v1/sessions", json={"id": sid})).status_code == 409
    assert (await mesh.http.post("/v1/sessions", json={"bogus": 1})).status_code == 400


async def test_sessions_page_through_without_repeats(mesh: Mesh) -> None:
    made = {(await mesh.http.post("/v1/sessions", json={})).json()["id"] for _ in range(5)}
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = (await mesh.http.get("/v1/sessions", params=params)).json()
        seen += [s["id"] for s in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert made <= set(seen)
    assert len(seen) == len(set(seen))


async def test_redis_down_is_503_with_retry_after(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    options = MeshOptions(indexer=False, keys_redis_url=valkey_url)  # the memory's Redis is down
    async with in_process_mesh(dead, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        response = await mesh.chat("hello", session_id=session())
        stateless = await mesh.chat("hello")

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error"]["code"] == "memory_unavailable"
    assert stateless.status_code == 200  # no session: memory is not needed


async def test_vector_store_down_answers_from_history_and_keeps_turns_queued(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    options = MeshOptions(indexer=False, qdrant_url=f"http://127.0.0.1:{free_port()}")
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        sid = session()
        first = await mesh.chat("My cat is called Biscuit.", session_id=sid, user="u-1")
        await mesh.stored()
        second = await mesh.chat("What is my cat called?", session_id=sid, user="u-1")
        await mesh.stored()
        queued_before = await mesh.store.queued()
        with pytest.raises(VectorStoreUnavailable):
            await mesh.indexer.step()
        queued_after = await mesh.store.queued()
        await mesh.store.unqueue("default", sid)  # leave the shared queue clean for other tests

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["x-llmmesh-recall"] == "skipped"
    # The short-term history still answered: the first turn reached the prompt.
    assert {"role": "user", "content": "My cat is called Biscuit."} in mesh.backend.last_prompt
    assert queued_before >= 2
    assert queued_after == queued_before  # nothing lost: the turns wait for the store to return


async def test_a_follow_up_sent_at_once_finds_the_previous_turn(mesh: Mesh, monkeypatch: Any) -> None:
    original = mesh.core.append

    async def slow_append(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)  # fault injection: a slow store
        return await original(*args, **kwargs)

    monkeypatch.setattr(mesh.core, "append", slow_append)
    sid = session()
    assert (await mesh.chat("My name is Ada.", session_id=sid)).status_code == 200
    assert (await mesh.chat("What is my name?", session_id=sid)).status_code == 200

    assert {"role": "user", "content": "My name is Ada."} in mesh.backend.last_prompt


def _embed_calls() -> float:
    return (
        REGISTRY.get_sample_value(
            "llmmesh_grpc_server_handled_total", {"service": "inference", "method": "Embed", "code": "OK"}
        )
        or 0.0
    )


async def test_recall_costs_an_embedding_only_when_something_can_be_recalled(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    """Most turns have nothing outside the window and no user: they must not pay for the query's
    embedding. A user's turn may recall their other sessions, so it does."""
    options = MeshOptions(indexer=False, window_turns=2)
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        sid = session()
        before = _embed_calls()
        for text in ("first", "second"):
            assert (await mesh.chat(text, session_id=sid)).status_code == 200
            await mesh.stored()
        within_window = _embed_calls() - before
        for text in ("third", "fourth"):  # the window holds 2 turns: the first one has left it
            assert (await mesh.chat(text, session_id=sid)).status_code == 200
            await mesh.stored()
        past_window = _embed_calls() - before - within_window
        other = session()
        assert (await mesh.chat("hello", session_id=other, user="u-embed")).status_code == 200
        with_user = _embed_calls() - before - within_window - past_window
        await mesh.stored()
        for done in (sid, other):  # leave the shared queue clean for other tests
            await mesh.store.unqueue("default", done)

    assert within_window == 0
    assert past_window >= 1
    assert with_user == 1


class _RecordingEmbeddings:
    """Test spy: the real embeddings, each call's texts recorded."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return await self.inner.embed(texts)


async def test_the_indexer_gathers_turns_that_finish_while_its_batch_waits(
    valkey_url: str, tmp_path: Path, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> None:
    options = MeshOptions(indexer=False)
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, options) as mesh:
        spy = _RecordingEmbeddings(mesh.core.embeddings)
        indexer = Indexer(mesh.store, mesh.vectors, spy, batch=32, claim_idle_ms=30_000, gather_s=0.5)
        sid = session()
        assert (await mesh.chat("The lighthouse keeper is Morgan.", session_id=sid)).status_code == 200
        await mesh.stored()
        step = asyncio.create_task(indexer.step())
        await asyncio.sleep(0.15)  # the first turn is taken; the batch waits for more
        assert not step.done()
        assert (await mesh.chat("The ferry leaves at noon.", session_id=sid)).status_code == 200
        await mesh.stored()
        taken = await step
        stored = await mesh.vectors.count("default")

    assert taken >= 2
    assert len(spy.calls) == 1  # both turns in one pass of the model
    assert {"The lighthouse keeper is Morgan.", "The ferry leaves at noon."} <= set(spy.calls[0])
    assert stored >= 4  # each turn's message and reply
