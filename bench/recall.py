"""Long-term memory recall on long conversations (`bench.recall_data`): does memory search
find the turns that answer a question? Per kind of question and overall: hit@5 and hit@10
(any evidence turn among the first 5 / 10 memories found), all-evidence@10 (every one of
them among the first 10), and search latency as the client sees it.

Two ways to run it:

- through the mesh (`python -m bench recall`, or `python -m bench.recall`): the stack with the
  instant backend; one end user per conversation and one llmmesh session per dialog session,
  every dialog turn a chat completion with the user message "<speaker>: <text>"; once the
  indexer has caught up, `POST /v1/memories/search` with the user, top_k 10, per question.
- in process (`python -m bench.recall --in-process [--conversations N]`): the same turns
  straight into the memory service's domain objects (records of a user and an assistant
  message per turn, the real embedding model, EdgeVectorStore in a temporary folder), then
  `MemoryCore.search` with the user scope and top_k 10. No mesh, no Redis: for iterating on
  how memories are stored and found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Context, Report, Row, format_report, percentile
from bench.procs import MODEL, llmmesh_stack, wait_indexed
from bench.recall_data import KINDS, Conversation, Dataset, Question, build

TOP_K = 10
TENANT = "recall"
CONCURRENCY = 12  # conversations replayed at once; the turns of one conversation go in order
QUICK_CONVERSATIONS = 3
# What the instant backend answers (16 tokens of " tok"): the assistant side of every turn.
INSTANT_REPLY = " tok" * 16
EMBED_BATCH = 64

TurnRef = tuple[int, int]  # (session index, turn index) in a conversation


def utterance(speaker: str, text: str) -> str:
    """A dialog turn as the user message that carries it."""
    return f"{speaker}: {text}"


def user_of(run: str, conversation: Conversation) -> str:
    return f"recall-{run}-{conversation.id}"


def session_id_of(run: str, conversation: Conversation, session: int) -> str:
    return f"recall-{run}-{conversation.id}-s{session:02d}"


class TurnMap:
    """Maps a memory found back to the dialog turn it came from: by session and seq (the
    turn's 1-based position in its llmmesh session), else by its text within the session."""

    def __init__(self, run: str, conversation: Conversation) -> None:
        self.sessions = {session_id_of(run, conversation, i): i for i in range(len(conversation.sessions))}
        self.texts = {
            (i, utterance(t.speaker, t.text)): j
            for i, session in enumerate(conversation.sessions)
            for j, t in enumerate(session.turns)
        }
        self.lengths = [len(s.turns) for s in conversation.sessions]

    def turn(self, session_id: str, seq: int, text: str, role: str = "user") -> TurnRef | None:
        """A reply is no dialog turn (None), even if it shares its turn's seq."""
        session = self.sessions.get(session_id)
        if session is None or role != "user":
            return None
        if 1 <= seq <= self.lengths[session]:
            return session, seq - 1
        by_text = self.texts.get((session, text))
        return None if by_text is None else (session, by_text)


@dataclass
class Outcome:
    question: Question
    found: list[TurnRef | None]  # best first; None: a memory that is no dialog turn (a reply)
    seconds: float

    def hit(self, k: int) -> bool:
        evidence = set(self.question.evidence)
        return any(ref in evidence for ref in self.found[:k])

    def all_found(self, k: int) -> bool:
        return set(self.question.evidence) <= {ref for ref in self.found[:k] if ref is not None}


@dataclass
class Scores:
    outcomes: list[Outcome] = field(default_factory=list)

    def rows(self) -> list[Row]:
        rows = []
        for kind in (*KINDS, "all"):
            picked = [o for o in self.outcomes if kind in ("all", o.question.kind)]
            if not picked:
                continue
            n = len(picked)
            metrics = {
                "hit@5_pct": 100 * sum(o.hit(5) for o in picked) / n,
                "hit@10_pct": 100 * sum(o.hit(10) for o in picked) / n,
                "all@10_pct": 100 * sum(o.all_found(10) for o in picked) / n,
                "questions": float(n),
            }
            rows.append(Row(kind, metrics))
        latencies = [o.seconds for o in self.outcomes]
        p50, p95 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.95) * 1000
        rows.append(Row("search latency", {"p50_ms": p50, "p95_ms": p95}, {"top_k": TOP_K}))
        return rows


def _questions_of(dataset: Dataset, conversations: int) -> list[Question]:
    return [q for q in dataset.questions if q.conversation < conversations]


# --- in process ----------------------------------------------------------------------------


class _LocalEmbeddings:
    """The mesh's embedding model in this process, as the memory service's `Embeddings`."""

    def __init__(self) -> None:
        from services.inference.embedder import Embedder

        self._embedder = Embedder.load()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors, _ = await asyncio.to_thread(self._embedder.embed, list(texts))
        return vectors


async def evaluate_in_process(
    dataset: Dataset, conversations: int | None = None, top_k: int = TOP_K, folder: Path | None = None
) -> tuple[Scores, dict[str, float]]:
    """Stores every turn of the first `conversations` as the indexer would, then searches;
    returns the scores and the seconds each phase took."""
    import redis.asyncio as redis

    from services.memory.core import MemoryCore, RecallPolicy, records_of
    from services.memory.encoding import Encoder, WordCache
    from services.memory.store import SessionStore, StoredMessage
    from services.memory.vectors import DIMS, EdgeVectorStore, MemoryRecord

    count = len(dataset.conversations) if conversations is None else conversations
    convs = dataset.conversations[:count]
    run = "inproc"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    embeddings = _LocalEmbeddings()
    timings["model_load_s"] = time.perf_counter() - started

    records: list[MemoryRecord] = []
    for conversation in convs:
        user = user_of(run, conversation)
        for index, session in enumerate(conversation.sessions):
            session_id = session_id_of(run, conversation, index)
            created = int(dt.datetime.fromisoformat(session.date).replace(tzinfo=dt.UTC).timestamp())
            for position, turn in enumerate(session.turns):
                messages = [
                    StoredMessage("user", utterance(turn.speaker, turn.text)),
                    StoredMessage("assistant", INSTANT_REPLY),
                ]
                seq = position + 1
                turn_id = f"{session_id}-t{seq}"
                records += records_of(TENANT, session_id, user, turn_id, seq, created + 30 * position, messages)

    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmmesh-recall-")))
        vectors = EdgeVectorStore(folder / "qdrant", DIMS)
        try:
            # As the indexer does it: each batch of memories encoded (clauses, words, terms) in
            # one pass of the embedding model, then written.
            words = WordCache()
            encoder = Encoder(embeddings, words)
            started = time.perf_counter()
            for first in range(0, len(records), EMBED_BATCH):
                batch_records = records[first : first + EMBED_BATCH]
                await vectors.upsert(batch_records, await encoder.documents([r.text for r in batch_records]))
            timings["index_s"] = time.perf_counter() - started

            # Search reads no session state: the session store is never reached.
            store = SessionStore(redis.Redis(), ttl_s=3600, max_turns=1000)
            core = MemoryCore(store, vectors, embeddings, window_turns=20, recall=RecallPolicy(), words=words)
            maps = [TurnMap(run, c) for c in convs]
            scores = Scores()
            started = time.perf_counter()
            for question in _questions_of(dataset, count):
                conversation = convs[question.conversation]
                t0 = time.perf_counter()
                found = await core.search(TENANT, question.question, user_of(run, conversation), "", top_k)
                seconds = time.perf_counter() - t0
                refs = [
                    maps[question.conversation].turn(f.record.session_id, f.record.seq, f.record.text, f.record.role)
                    for f in found
                ]
                scores.outcomes.append(Outcome(question, refs, seconds))
            timings["search_s"] = time.perf_counter() - started
        finally:
            await vectors.close()
    timings["memories"] = float(len(records))
    return scores, timings


# --- through the mesh ----------------------------------------------------------------------


async def _replay(base: str, headers: dict[str, str], run: str, convs: list[Conversation]) -> int:
    """Every turn as a chat completion: conversations side by side, each one's turns in order."""
    slots = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=120)

    async def conversation_turns(http: aiohttp.ClientSession, conversation: Conversation) -> int:
        sent = 0
        async with slots:
            for index, session in enumerate(conversation.sessions):
                for turn in session.turns:
                    body = {
                        "model": MODEL,
                        "user": user_of(run, conversation),
                        "session_id": session_id_of(run, conversation, index),
                        "messages": [{"role": "user", "content": utterance(turn.speaker, turn.text)}],
                    }
                    async with http.post(f"{base}/chat/completions", json=body) as response:
                        if response.status != 200:
                            raise RuntimeError(f"chat turn refused: {response.status} {await response.text()}")
                        await response.read()
                    sent += 1
        return sent

    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        counts = await asyncio.gather(*(conversation_turns(http, c) for c in convs))
    return sum(counts)


async def _search(base: str, headers: dict[str, str], run: str, dataset: Dataset, count: int) -> Scores:
    convs = dataset.conversations[:count]
    maps = [TurnMap(run, c) for c in convs]
    scores = Scores()
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as http:
        for question in _questions_of(dataset, count):
            conversation = convs[question.conversation]
            body = {"query": question.question, "user": user_of(run, conversation), "top_k": TOP_K}
            t0 = time.perf_counter()
            async with http.post(f"{base}/memories/search", json=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"memory search refused: {response.status} {await response.text()}")
                reply: dict[str, Any] = await response.json()
            seconds = time.perf_counter() - t0
            turn_map = maps[question.conversation]
            # By the turn's seq; a memory object without one (an older gateway) by its text.
            refs = [turn_map.turn(m["session_id"], int(m.get("seq") or 0), m["text"], m["role"]) for m in reply["data"]]
            scores.outcomes.append(Outcome(question, refs, seconds))
    return scores


def run(ctx: Context) -> Report:
    dataset = build()
    count = QUICK_CONVERSATIONS if ctx.quick else len(dataset.conversations)
    run_id = uuid.uuid4().hex[:8]
    convs = dataset.conversations[:count]
    with llmmesh_stack(ctx.out_dir / "stack-recall", ctx.port_offset, LLMMESH_INFERENCE_BACKEND="instant") as stack:
        started = time.monotonic()
        turns = asyncio.run(_replay(stack.base_url, stack.auth, run_id, convs))
        replay_s = time.monotonic() - started
        waited_s = wait_indexed(stack, timeout_s=1800)
        scores = asyncio.run(_search(stack.base_url, stack.auth, run_id, dataset, count))
    rows = scores.rows()
    rows.append(Row("replay", {"turns": float(turns), "turns_s": turns / replay_s, "index_wait_s": waited_s}))
    return Report(
        benchmark="recall",
        description=f"memory search on {count} long conversations ({turns:,} turns), top_k {TOP_K}, through the mesh",
        rows=rows,
        notes=_notes(dataset, count),
        plot_metrics=["hit@5_pct", "hit@10_pct", "all@10_pct", "p95_ms"],
    )


def _notes(dataset: Dataset, count: int) -> list[str]:
    return [
        f"dataset: bench.recall_data seed {dataset.seed}, {count} of {len(dataset.conversations)} conversations",
        "hit@k: an evidence turn among the first k memories; all@10: every evidence turn among the first 10",
        "memories are a turn's user message ('<speaker>: <text>') and its reply (the instant backend's tokens)",
    ]


def in_process_report(conversations: int | None, seed: int | None) -> Report:
    dataset = build() if seed is None else build(seed)
    count = len(dataset.conversations) if conversations is None else conversations
    started = time.perf_counter()
    scores, timings = asyncio.run(evaluate_in_process(dataset, count))
    total = time.perf_counter() - started
    rows = scores.rows()
    rows.append(Row("timings", {**timings, "total_s": total}))
    return Report(
        benchmark="recall (in process)",
        description=f"MemoryCore.search on {count} conversations, top_k {TOP_K}",
        rows=rows,
        notes=_notes(dataset, count),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-process", action="store_true", help="no mesh: the memory service's objects directly")
    parser.add_argument("--conversations", type=int, default=None, help="the first N conversations only")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"through the mesh: {QUICK_CONVERSATIONS} conversations")
    parser.add_argument("--port-offset", type=int, default=40000, help="through the mesh: added to the stack's ports")
    args = parser.parse_args(argv)
    if args.in_process:
        report = in_process_report(args.conversations, args.seed)
    else:
        out_dir = Path("bench-results") / time.strftime("recall-%Y%m%d-%H%M%S")
        out_dir.mkdir(parents=True)
        report = run(Context(out_dir=out_dir, quick=args.quick, port_offset=args.port_offset))
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
