"""Long-term memory in the embedded engine (qdrant-edge through EdgeVectorStore): one tenant
with 10,000 sessions and 100,000 memories (--quick: 2,000 and 20,000). Measured: writing
them (upsert in the indexer's batches, then the index build in its child process, and how
long a recall waits meanwhile), recall latency with the new message's embedding by the real
all-MiniLM-L6-v2 and without it, a search over the whole tenant, and embedding throughput."""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.harness import Context, Report, Row, Target
from services.memory.vectors import DIMS, EdgeVectorStore, MemoryRecord

TENANT = "bench"
TURNS_PER_SESSION = 5  # a user and an assistant memory each
SESSIONS_PER_USER = 10
UPSERT_BATCH = 64  # what the indexer writes at once: 32 turns
RECALL_LIMIT = 15  # the memory service asks for 3 x top_k (5), then removes near-duplicates
RECALL_THRESHOLD = 0.0  # random corpus vectors sit near cosine 0: keep every candidate
EMBED_BATCH = 64
_IDS = uuid.UUID("3d1c1a52-9d0e-4f7e-8a43-51b6c2a0e9f4")

Embed = Callable[[Sequence[str]], np.ndarray]


def load_embedding_model() -> Embed:
    """The mesh's one embedding model (what the inference service's Embed RPC runs):
    texts -> L2-normalised float32 vectors."""
    from services.inference.embedder import Embedder

    embedder = Embedder.load()

    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors, _ = embedder.embed(texts)
        return np.asarray(vectors, dtype=np.float32)

    return embed


_OPENERS = [
    "Can you remind me", "I was wondering", "Quick question:", "Following up on yesterday,",
    "Do you remember", "Help me figure out", "What did we decide about", "I need a summary of",
    "Any ideas on", "Let's continue with",
]  # fmt: skip
_TOPICS = [
    "the budget for the Lisbon offsite", "my sister's birthday present", "the Kubernetes upgrade plan",
    "the vegetarian recipe with lentils", "why the invoice from March was rejected",
    "the training schedule for the half marathon", "the book you recommended about habits",
    "renewing my passport before the trip", "the database migration that failed on Friday",
    "what to plant on a north-facing balcony", "the onboarding checklist for new hires",
    "my allergy to penicillin", "the flight to Osaka next month", "the Python script that parses PDFs",
    "the apartment lease that ends in June", "the quarterly report for the board",
    "my daughter's piano lessons", "the bug in the checkout page", "the dentist appointment",
    "the hiking route in the Dolomites",
]  # fmt: skip
_ENDINGS = ["?", " please.", " when you have a moment.", ", and what the next step is?", " in two sentences."]


def query_texts(count: int, seed: int = 7) -> list[str]:
    """Chat messages of the usual length, all different."""
    rng = random.Random(seed)
    combos = [(o, t, e) for o in _OPENERS for t in _TOPICS for e in _ENDINGS]
    return [f"{o} {t}{e}" for o, t, e in rng.sample(combos, count)]


def memory_texts(count: int, seed: int = 11) -> list[str]:
    """Stored-memory-like sentences for the embedding throughput run."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_OPENERS)} {rng.choice(_TOPICS)}: we agreed to revisit it after {rng.randint(2, 9)} days "
        f"and to keep the notes in the shared folder{rng.choice(_ENDINGS)}"
        for _ in range(count)
    ]


def _session(index: int) -> tuple[str, str]:
    return f"session-{index:05d}", f"user-{index // SESSIONS_PER_USER:05d}"


def _records(first: int, count: int, created: int) -> list[MemoryRecord]:
    """Memories first..first+count of the corpus: sessions of TURNS_PER_SESSION turns."""
    out = []
    for i in range(first, first + count):
        turn, role_index = divmod(i, 2)
        session_index, seq0 = divmod(turn, TURNS_PER_SESSION)
        session_id, user = _session(session_index)
        role = ("user", "assistant")[role_index]
        out.append(
            MemoryRecord(
                id=str(uuid.uuid5(_IDS, f"{session_id}/{seq0 + 1}/{role}")),
                tenant=TENANT,
                session_id=session_id,
                user=user,
                role=role,
                text=f"{role} said something memorable in turn {seq0 + 1} of {session_id}",
                seq=seq0 + 1,
                turn_id=f"{session_id}-turn-{seq0 + 1}",
                created_at=created + turn,
            )
        )
    return out


def _unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, DIMS), dtype=np.float32)
    normed: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normed


def _ms(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": ordered[-1] * 1000}


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 1e6  # on disk, not sparse


class _Recaller:
    """Recall as a chat turn asks for it: a random session of the corpus, its user, the turn
    after its last stored one."""

    def __init__(self, store: EdgeVectorStore, sessions: int, seed: int) -> None:
        self.store = store
        self.sessions = sessions
        self.rng = random.Random(seed)

    async def __call__(self, vector: Sequence[float]) -> int:
        session_id, user = _session(self.rng.randrange(self.sessions))
        found = await self.store.recall(
            TENANT,
            vector,
            session_id=session_id,
            before_seq=self.rng.randint(2, TURNS_PER_SESSION + 1),
            user=user,
            limit=RECALL_LIMIT,
            threshold=RECALL_THRESHOLD,
            with_vectors=True,
        )
        return len(found)


async def _measure(folder: Path, memories: int, sessions: int, queries: list[str], embed: Embed) -> list[Row]:
    rng = np.random.default_rng(0)
    params = {"memories": memories, "sessions": sessions, "tenant": 1, "dims": DIMS}
    rows: list[Row] = []
    store = EdgeVectorStore(folder, DIMS, optimize_after=0)
    try:
        created = int(time.time()) - memories
        spent = 0.0
        for first in range(0, memories, UPSERT_BATCH):
            count = min(UPSERT_BATCH, memories - first)
            records, vectors = _records(first, count, created), _unit_rows(rng, count).tolist()
            started = time.perf_counter()
            await store.upsert(records, vectors)
            spent += time.perf_counter() - started
        if await store.count(TENANT) != memories:
            raise RuntimeError("the store does not hold every memory written")
        rows.append(Row(f"upsert, batches of {UPSERT_BATCH}", {"points_s": memories / spent}, dict(params)))

        # The index build, with recalls running all along: how long does one wait at worst?
        recall = _Recaller(store, sessions, seed=1)
        probe_vectors = _unit_rows(rng, 4096)
        waits: list[float] = []
        started = time.perf_counter()
        build = asyncio.create_task(store.optimize())
        while not build.done():
            t0 = time.perf_counter()
            await recall(probe_vectors[len(waits) % len(probe_vectors)])
            waits.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
        if not await build:
            raise RuntimeError("the index build indexed nothing")
        build_s = time.perf_counter() - started
        during = _ms(waits)
        rows.append(
            Row(
                "index build (child process)",
                {"build_s": build_s, "points_s": memories / build_s, "shard_mb": _folder_mb(folder)},
                dict(params),
            )
        )
        rows.append(Row("recall during the build", during, {**params, "recalls": len(waits)}))

        # Recall with the vector given, then a search over the whole tenant (its HNSW graph).
        found = 0
        samples = []
        for vector in _unit_rows(rng, 1000):
            t0 = time.perf_counter()
            found += await recall(vector)
            samples.append(time.perf_counter() - t0)
        rows.append(Row("recall, vector given", _ms(samples), {**params, "mean_hits": found / len(samples)}))
        samples = []
        for vector in _unit_rows(rng, 300):
            t0 = time.perf_counter()
            await store.search(TENANT, vector, limit=RECALL_LIMIT)
            samples.append(time.perf_counter() - t0)
        rows.append(Row("search whole tenant", _ms(samples), dict(params)))

        # As a chat turn does it: embed the new message, then recall with its vector.
        embed(queries[:8])  # warm-up
        embed_only, total = [], []
        for text in queries:
            t0 = time.perf_counter()
            (vector,) = await asyncio.to_thread(embed, [text])
            t1 = time.perf_counter()
            await recall(vector)
            t2 = time.perf_counter()
            embed_only.append(t1 - t0)
            total.append(t2 - t0)
        rows.append(Row("embed one message", _ms(embed_only), {"texts": len(queries)}))
        rows.append(Row("recall incl. embedding", _ms(total), {**params, "texts": len(queries)}))
    finally:
        await store.close()
    return rows


def _embedding_throughput(embed: Embed, batches: int) -> Row:
    texts = memory_texts(EMBED_BATCH * batches)
    seconds = []
    for i in range(batches):
        t0 = time.perf_counter()
        embed(texts[i * EMBED_BATCH : (i + 1) * EMBED_BATCH])
        seconds.append(time.perf_counter() - t0)
    per_batch = statistics.median(seconds)
    return Row(
        f"embed batches of {EMBED_BATCH}",
        {"texts_s": EMBED_BATCH / per_batch, "batch_p50_ms": per_batch * 1000},
        {"batches": batches},
    )


def run(ctx: Context) -> Report:
    memories, sessions = (20_000, 2_000) if ctx.quick else (100_000, 10_000)
    embed = load_embedding_model()
    queries = query_texts(200)
    with tempfile.TemporaryDirectory(prefix="llmmesh-bench-memory-") as tmp:
        rows = asyncio.run(_measure(Path(tmp) / "qdrant", memories, sessions, queries, embed))
    rows.append(_embedding_throughput(embed, batches=5 if ctx.quick else 20))
    by_case = {r.case: r.metrics for r in rows}
    total = by_case["recall incl. embedding"]
    return Report(
        benchmark="memory",
        description=f"embedded Qdrant (qdrant-edge), 1 tenant, {sessions:,} sessions, {memories:,} memories",
        rows=rows,
        targets=[
            Target("recall p95 incl. embedding (ms)", total["p95_ms"], "<= 20 ms", total["p95_ms"] <= 20),
        ],
        notes=[
            "corpus vectors are random unit vectors (recall latency does not depend on the text); "
            "the 200 query messages are real sentences embedded by all-MiniLM-L6-v2, one at a time",
            f"recall: a random session, its user ({SESSIONS_PER_USER} sessions each), limit {RECALL_LIMIT}, "
            "vectors returned; in the mesh the embedding also crosses a gRPC hop to the inference service",
            "the index is built in a child process on a copy of the shard; 'recall during the build' "
            "includes the copy and the swap to the rebuilt shard",
            "published p95 search latencies for comparison: Mem0 200 ms, Zep 155 ms",
        ],
        plot_metrics=["p50_ms", "p95_ms", "points_s", "texts_s"],
    )
