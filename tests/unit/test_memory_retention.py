"""Retention: memories past a tenant's policy (age, count per user, count per session) are
erased as a deletion erases them — no listing, no hybrid search (dense or lexical) and no
stored history finds them — and nothing else is touched. A real valkey-server, the embedded
Qdrant engine; vectors are random (retention does not read them)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from services.memory.core import MemoryCore, RecallPolicy, records_of
from services.memory.retention import Retention, RetentionPolicy
from services.memory.store import SessionStore, StoredMessage
from services.memory.vectors import DIMS, EdgeVectorStore, MemoryRecord

NOW = time.time()
DAY = 86_400


class NoEmbeddings:
    """Retention never embeds; a call would fail the test."""

    async def embed(self, texts: object) -> list[list[float]]:
        raise AssertionError("retention must not embed anything")


@pytest.fixture
async def core(valkey_url: str, tmp_path: Path) -> AsyncIterator[MemoryCore]:
    store = SessionStore.from_url(valkey_url, 3600, 200)
    vectors = EdgeVectorStore(tmp_path / "qdrant", DIMS, optimize_after=0)
    try:
        yield MemoryCore(store, vectors, NoEmbeddings(), window_turns=20, recall=RecallPolicy())
    finally:
        await vectors.close()
        await store.close()


def _vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIMS)
    return (v / np.linalg.norm(v)).tolist()  # type: ignore[no-any-return]


async def remember(
    core: MemoryCore, tenant: str, session_id: str, user: str, text: str, age_days: float
) -> MemoryRecord:
    """A stored turn whose user message is `text`, indexed as `age_days` old."""
    turn_id = f"turn-{session_id}-{text.split()[-1]}"
    messages = [StoredMessage("user", text)]
    _, _, seq = await core.store.append(tenant, session_id, turn_id, messages, user=user)
    (record,) = records_of(tenant, session_id, user, turn_id, seq, int(NOW - age_days * DAY), messages)
    await core.vectors.upsert([record], [_vector(seq)])
    return record


async def found_anywhere(core: MemoryCore, record: MemoryRecord) -> list[str]:
    """Where the memory can still be seen: its id, a lexical search for its last word, the
    listings by user and by session, and the session's stored history."""
    seen = []
    if await core.vectors.get(record.tenant, [record.id]):
        seen.append("get")
    word = record.text.split()[-1]
    hits = await core.vectors.search(record.tenant, _vector(99), limit=50, text=word, threshold=0.99)
    if any(h.record.id == record.id for h in hits):
        seen.append("search")
    for scope in ({"user": record.user}, {"session_id": record.session_id}):
        listed, _ = await core.vectors.list(record.tenant, limit=100, **scope)
        if any(r.id == record.id for r in listed):
            seen.append(f"list {scope}")
    _, turns = await core.store.context(record.tenant, record.session_id)
    if any(m.content == record.text for t in turns for m in t.messages):
        seen.append("history")
    return seen


async def test_memories_older_than_the_tenants_age_are_erased_everywhere(core: MemoryCore, tenant: str) -> None:
    other = f"{tenant}-other"
    old = await remember(core, tenant, "s1", "maya", "I adopted a greyhound named quokka", age_days=40)
    recent = await remember(core, tenant, "s1", "maya", "The greyhound learned to sit zebrafinch", age_days=2)
    theirs = await remember(core, other, "s1", "maya", "I adopted a greyhound named platypus", age_days=40)
    assert await found_anywhere(core, old) == [
        "get",
        "search",
        "list {'user': 'maya'}",
        "list {'session_id': 's1'}",
        "history",
    ]

    retention = Retention(core, RetentionPolicy(), {tenant: RetentionPolicy(max_age_days=30)}, every_s=60)
    assert await retention.sweep(NOW) == 1

    assert await found_anywhere(core, old) == []
    assert len(await found_anywhere(core, recent)) == 5
    assert len(await found_anywhere(core, theirs)) == 5  # another tenant, no policy
    assert await retention.sweep(NOW) == 0


async def test_counts_per_user_and_per_session_keep_the_newest(core: MemoryCore, tenant: str) -> None:
    maya = [await remember(core, tenant, f"s{i}", "maya", f"Maya note number{i}", age_days=10 - i) for i in range(5)]
    ravi = [await remember(core, tenant, "r1", "ravi", f"Ravi note item{i}", age_days=10 - i) for i in range(3)]
    retention = Retention(core, RetentionPolicy(max_per_user=2), {}, every_s=60)
    assert retention.active

    assert await retention.sweep(NOW) == 3 + 1
    assert [bool(await found_anywhere(core, r)) for r in maya] == [False, False, False, True, True]
    assert [bool(await found_anywhere(core, r)) for r in ravi] == [False, True, True]

    per_session = Retention(core, RetentionPolicy(max_per_session=1), {}, every_s=60)
    assert await per_session.sweep(NOW) == 1  # ravi's session r1 holds two
    assert [bool(await found_anywhere(core, r)) for r in ravi] == [False, False, True]


def test_retention_is_off_by_default() -> None:
    from services.memory.settings import MemorySettings

    settings = MemorySettings()
    assert not settings.retention.active
    assert settings.retention_tenants == {}
