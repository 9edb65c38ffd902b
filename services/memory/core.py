"""What the memory service does, in domain terms: the context of a chat turn (the session, its
short-term window and recalled long-term memories), storing turns, and sessions and memories
a user can list and erase. The servicer maps this to and from protos."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import redis.asyncio as redis
from prometheus_client import Counter

from services.common.errors import MeshError
from services.memory import lexical
from services.memory.embedding import Embeddings, EmbeddingUnavailableError
from services.memory.encoding import Encoder, WordCache
from services.memory.store import SessionInfo, SessionStore, StoredMessage, StoredTurn
from services.memory.vectors import MemoryRecord, ScoredRecord, VectorStore, VectorStoreUnavailable

log = logging.getLogger(__name__)

RECALL_SKIPPED = Counter(
    "llmmesh_memory_recall_skipped_total", "Chat turns answered without recall, by cause.", ["cause"]
)

# Point ids derive from the turn, so indexing a turn twice writes the same points.
_POINTS = uuid.UUID("6f1d6c1e-52a8-4a53-9f3c-7f2b1e0c9a11")
INDEXED_ROLES = ("user", "assistant")
# The BM25 score a memory needs to enter the lexical ranking. A word that half the memories
# hold (the name of the person speaking) scores about 1; a rare one 5 to 10. Without a floor
# every memory that merely names the speaker ranks, and the fusion drowns the evidence.
LEXICAL_FLOOR = 1.5
_WORD = re.compile(r"\w+")
# A text this long or longer whose distinct words are fewer than this share of its words is a
# repetition ("tok tok tok ...", a stuck generation), not something said.
_REPETITIVE_WORDS = 8
_REPETITIVE_SHARE = 0.3


def memory_id(tenant: str, session_id: str, turn_id: str, index: int) -> str:
    return str(uuid.uuid5(_POINTS, f"{tenant}\x00{session_id}\x00{turn_id}\x00{index}"))


def not_found(what: str, ident: str) -> MeshError:
    return MeshError(grpc.StatusCode.NOT_FOUND, f"No {what} found with id '{ident}'.", f"{what}_not_found")


def dependency_unavailable(exc: Exception) -> MeshError | None:
    """A store or model that went away is UNAVAILABLE (the client may retry), never INTERNAL:
    the one mapping for every RPC (the service's error translator)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        log.warning("memory store unreachable", extra={"error": type(exc).__name__})
        message, reason = "The conversation store is unavailable; retry shortly.", "memory_unavailable"
    elif isinstance(exc, VectorStoreUnavailable):
        message, reason = "Long-term memory is unavailable; retry shortly.", "memory_unavailable"
    elif isinstance(exc, EmbeddingUnavailableError):
        message, reason = "The embedding model is unavailable.", "embedding_unavailable"
    else:
        return None
    return MeshError(grpc.StatusCode.UNAVAILABLE, message, reason)


def window_of(session: SessionInfo, turns: Sequence[StoredTurn], window_turns: int) -> list[StoredTurn]:
    """The turns of the short-term window. It starts at the session's window mark (moved by
    prompt trimming) and holds at most `window_turns`; past that it moves in steps of half its
    size, computed from the turn count alone, so consecutive turns see the same start."""
    step = max(1, window_turns // 2)
    over = session.seq - window_turns
    dropped = 0 if over <= 0 else math.ceil(over / step) * step
    first = max(session.window, dropped + 1)
    return [t for t in turns if t.seq >= first]


def worth_remembering(text: str) -> bool:
    """Whether a message says something: at least one word that is not a stop word, and not a
    repetition of a few words over and over."""
    words = _WORD.findall(text.lower())
    if len(words) >= _REPETITIVE_WORDS and len(set(words)) < _REPETITIVE_SHARE * len(words):
        return False
    return bool(lexical.document(text))


def records_of(
    tenant: str, session_id: str, user: str, turn_id: str, seq: int, created_at: int, messages: list[StoredMessage]
) -> list[MemoryRecord]:
    """The long-term memories of one stored turn: its user and assistant texts that say something."""
    return [
        MemoryRecord(
            id=memory_id(tenant, session_id, turn_id, index),
            tenant=tenant,
            session_id=session_id,
            user=user,
            role=m.role,
            text=m.content,
            seq=seq,
            turn_id=turn_id,
            created_at=created_at,
        )
        for index, m in enumerate(messages)
        if m.role in INDEXED_ROLES and worth_remembering(m.content)
    ]


def without_near_duplicates(found: list[ScoredRecord], limit: int, similarity: float) -> list[ScoredRecord]:
    """Best first; drops a memory whose text or vector (cosine) is too close to a better one."""
    kept: list[ScoredRecord] = []
    for candidate in found:
        text = " ".join(candidate.record.text.lower().split())
        duplicate = any(
            text == " ".join(k.record.text.lower().split())
            or (
                candidate.vector is not None
                and k.vector is not None
                and sum(a * b for a, b in zip(candidate.vector, k.vector, strict=False)) >= similarity
            )
            for k in kept
        )
        if not duplicate:
            kept.append(candidate)
        if len(kept) == limit:
            break
    return kept


def without_placeholders(turn: StoredTurn) -> StoredTurn:
    """The turn without the placeholders of forgotten messages (role ""): what a prompt gets."""
    if all(m.role for m in turn.messages):
        return turn
    return StoredTurn(turn.turn_id, turn.seq, [m for m in turn.messages if m.role])


@dataclass
class TurnContext:
    session: SessionInfo | None
    window: list[StoredTurn]
    recalled: list[ScoredRecord] = field(default_factory=list)
    recall_skipped: bool = False


@dataclass
class RecallPolicy:
    """What recall puts into a chat turn's prompt: at most `top_k` memories of the one ranking
    `search` uses too (hybrid), each either with a clause at least `threshold` similar to the new
    message (cosine) or with words on average at least `word_floor` similar to its words, none a
    near-duplicate (cosine above `dedup_similarity`) of a better one."""

    top_k: int = 5
    threshold: float = 0.35
    dedup_similarity: float = 0.95
    word_floor: float = 0.5


class MemoryCore:
    def __init__(
        self,
        store: SessionStore,
        vectors: VectorStore,
        embeddings: Embeddings,
        *,
        window_turns: int,
        recall: RecallPolicy,
        words: WordCache | None = None,
    ) -> None:
        self.store = store
        self.vectors = vectors
        self.embeddings = embeddings
        self.encoder = Encoder(embeddings, words)
        self._window_turns = window_turns
        self._recall = recall

    # --- a chat turn --------------------------------------------------------------------

    async def context(self, tenant: str, session_id: str, user: str, query: str) -> TurnContext:
        """The session, its window and the memories relevant to `query`. Redis is required
        (UNAVAILABLE without it); the vector store is not (recall_skipped)."""
        wants_recall = bool(query and self._recall.top_k)
        # With a user, recall may draw on their other sessions whatever this one holds: the
        # query is embedded while Redis is read. Without one, only this session's turns older
        # than the window can be recalled, and a session that has none (most of them) costs
        # no embedding at all.
        embedding = asyncio.ensure_future(self.encoder.query(query)) if wants_recall and user else None
        try:
            session, turns = await self.store.context(tenant, session_id)
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        if session is None:
            session = SessionInfo(id=session_id)
        window = [without_placeholders(t) for t in window_of(session, turns, self._window_turns)]
        result = TurnContext(session, window)
        before_seq = window[0].seq if window else session.seq + 1
        if not wants_recall or (before_seq <= 1 and not user):
            return result  # nothing can be outside the window yet
        try:
            probe = await (embedding or self.encoder.query(query))
            found = await self.vectors.recall(
                tenant,
                probe,
                session_id=session_id,
                before_seq=before_seq,
                user=user,
                limit=self._recall.top_k * 3,
                threshold=self._recall.threshold,
                with_vectors=True,
                word_floor=self._recall.word_floor,
            )
        except EmbeddingUnavailableError as exc:
            log.warning("recall skipped: no embedding", extra={"error": str(exc)})
            RECALL_SKIPPED.labels("embedding").inc()
            result.recall_skipped = True
            return result
        except VectorStoreUnavailable as exc:
            log.warning("recall skipped: vector store unreachable", extra={"error": str(exc)})
            RECALL_SKIPPED.labels("vector_store").inc()
            result.recall_skipped = True
            return result
        result.recalled = without_near_duplicates(found, self._recall.top_k, self._recall.dedup_similarity)
        return result

    async def append(
        self,
        tenant: str,
        session_id: str,
        turn_id: str,
        messages: list[StoredMessage],
        *,
        user: str,
        started_at_ms: int,
        window_start: int,
    ) -> tuple[bool, int, int]:
        return await self.store.append(
            tenant, session_id, turn_id, messages, user=user, started_at_ms=started_at_ms, window_start=window_start
        )

    # --- sessions -----------------------------------------------------------------------

    async def create_session(
        self, tenant: str, session_id: str, system_prompt: str, metadata: dict[str, str], user: str
    ) -> SessionInfo:
        session_id = session_id or f"sess_{uuid.uuid4().hex}"
        fresh = await self.store.upsert_session(
            tenant, session_id, system_prompt=system_prompt, metadata=metadata, user=user
        )
        if not fresh:
            raise MeshError(
                grpc.StatusCode.ALREADY_EXISTS, f"A session with id '{session_id}' already exists.", "session_exists"
            )
        return await self.get_session(tenant, session_id)

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo:
        session = await self.store.session(tenant, session_id)
        if session is None:
            raise not_found("session", session_id)
        return session

    async def session_turns(self, tenant: str, session_id: str) -> tuple[SessionInfo, list[StoredTurn]]:
        session, turns = await self.store.context(tenant, session_id)
        if session is None:
            raise not_found("session", session_id)
        return session, turns

    async def update_session(
        self, tenant: str, session_id: str, system_prompt: str | None, metadata: dict[str, str] | None
    ) -> SessionInfo:
        await self.get_session(tenant, session_id)
        await self.store.upsert_session(tenant, session_id, system_prompt=system_prompt, metadata=metadata)
        return await self.get_session(tenant, session_id)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        """Gone from Redis, from the queue and from the vector store. The deletion mark is
        written first: a turn in flight is refused from then on."""
        existed = await self.store.delete_session(tenant, session_id)
        await self.store.unqueue(tenant, session_id)
        removed = await self.vectors.delete_session(tenant, session_id)
        return existed or removed > 0

    # --- memories -----------------------------------------------------------------------

    async def search(self, tenant: str, query: str, user: str, session_id: str, top_k: int) -> list[ScoredRecord]:
        probe = await self.encoder.query(query)
        found = await self.vectors.search(
            tenant,
            probe,
            limit=top_k * 2,
            session_id=session_id,
            user=user,
            with_vectors=True,
            lexical_floor=LEXICAL_FLOOR,
        )
        return without_near_duplicates(found, top_k, 1.01)  # exact repeats only

    async def list(
        self, tenant: str, user: str, session_id: str, limit: int, after: str
    ) -> tuple[list[MemoryRecord], bool]:
        return await self.vectors.list(tenant, session_id=session_id, user=user, limit=limit, after=after)

    async def delete_memory(self, tenant: str, memory_id: str) -> bool:
        found = await self.vectors.get(tenant, [memory_id])
        if not found:
            raise not_found("memory", memory_id)
        await self.erase(tenant, found)
        return True

    async def forget_turn(self, tenant: str, session_id: str, turn_id: str, message_index: int | None) -> bool:
        """A stored turn (or one message of it) gone from the history, the queue and the
        vector store; the ids are marked forgotten first, so an indexer holding the turn cannot
        write them back."""
        count = await self.store.forget_turn(tenant, session_id, turn_id, message_index)
        if count < 0:
            return False
        indexes = range(count) if message_index is None else [message_index]
        ids = [memory_id(tenant, session_id, turn_id, i) for i in indexes]
        if ids:
            await self.store.mark_forgotten(tenant, ids)
            await self.vectors.delete(tenant, ids)
        if message_index is None:
            await self.store.unqueue(tenant, session_id, turn_id)
        return True

    async def erase(self, tenant: str, records: Sequence[MemoryRecord]) -> None:
        """Forgets memories everywhere: marked first (an indexer holding their turn cannot
        write them back), then out of the vector store (every vector of theirs, dense and
        lexical) and blanked in the stored history."""
        if not records:
            return
        await self.store.mark_forgotten(tenant, [r.id for r in records])
        await self.vectors.delete(tenant, [r.id for r in records])
        for record in records:
            await self.store.forget_message(tenant, record.session_id, record.turn_id, record.text)
