"""Which inference replica runs a chat turn.

With several inference replicas (``inference_targets``), a session's turns go to the replica that
ran its previous turn, whose engines hold the session's prefix in their cache, unless that
replica is overloaded; every other turn goes to the least-loaded replica. The rule is the one
each replica applies again among its own engines (services/common/placement.py).

The replicas' figures come from their GetLoad RPC, polled in the background every
``placement_poll_s``: a turn never waits for them. A replica that has not answered for 2 s is
left out until it answers again; when no replica has answered (start-up, or all of them
silent), every replica is a candidate and the turn goes by affinity, else to the first. Between
two polls, each turn this gateway sends to a replica counts as one more running there, so a
burst spreads instead of landing on whichever replica looked idlest at the last poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping

import grpc
from prometheus_client import Counter

from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.placement import REASONS, STALE_S, AffinityMap, Load, Overload, choose

log = logging.getLogger(__name__)

PLACEMENTS = Counter(
    "llmmesh_gateway_placements_total",
    "Chat turns placed on an inference replica, by reason: affinity (the replica that served the session last), "
    "least_loaded, only (one replica).",
    ["reason"],
)
for _reason in REASONS:
    PLACEMENTS.labels(_reason)


def affinity_key(tenant: str, session_id: str) -> str:
    """The opaque key of a conversation ("" without a session): a hash, so neither the tenant nor
    the session id travels to the replicas or appears in their logs."""
    if not session_id:
        return ""
    return hashlib.blake2b(f"{tenant}\0{session_id}".encode(), digest_size=12).hexdigest()


def replica_load(reply: inference_pb2.GetLoadResponse) -> Load:
    """A replica's engines as one target: counts add up, KV cache use averages."""
    loads = [Load.of(e.outstanding, e.waiting, e.kv_cache_usage, e.max_num_seqs) for e in reply.engines]
    if not loads:
        return Load()
    return Load(
        sum(load.running for load in loads),
        sum(load.waiting for load in loads),
        sum(load.kv_cache_usage for load in loads) / len(loads),
        sum(load.max_num_seqs for load in loads),
    )


class ReplicaPlacement:
    """Picks an inference replica per turn; `start` begins polling their load, `stop` ends it."""

    def __init__(
        self,
        replicas: Mapping[str, inference_pb2_grpc.InferenceServiceStub],
        overload: Overload | None = None,
        affinity_sessions: int = 100_000,
        poll_s: float = 0.5,
        stale_s: float = STALE_S,
    ) -> None:
        if not replicas:
            raise ValueError("at least one inference replica is needed")
        self._stubs = dict(replicas)
        self._overload = overload or Overload()
        self._affinity = AffinityMap(affinity_sessions)
        self._poll_s = poll_s
        self._stale_s = stale_s
        # Replica -> (time.monotonic() of its last answer, its load then).
        self._figures: dict[str, tuple[float, Load]] = {}
        self._silent: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def targets(self) -> list[str]:
        return list(self._stubs)

    def start(self) -> None:
        """Starts polling (only with more than one replica: one needs no choice)."""
        if self._task is None and len(self._stubs) > 1:
            self._task = asyncio.create_task(self._poll_forever(), name="replica-placement")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def pick(self, affinity_key: str = "") -> inference_pb2_grpc.InferenceServiceStub:
        """The replica for a turn with this affinity key ("" for none). Starts polling if
        `start` was not called, so the first turns may go by affinity alone."""
        self.start()
        now = time.monotonic()
        fresh = {
            target: figures[1]
            for target in self._stubs
            if (figures := self._figures.get(target)) is not None and now - figures[0] <= self._stale_s
        }
        loads = fresh or dict.fromkeys(self._stubs, Load())
        target, reason = choose(loads, affinity_key, self._affinity, self._overload)
        PLACEMENTS.labels(reason).inc()
        if target in self._figures:
            at, load = self._figures[target]
            self._figures[target] = (at, dataclasses.replace(load, running=load.running + 1))
        return self._stubs[target]

    def loads(self) -> dict[str, Load]:
        """The replicas' last known loads (for status pages and tests)."""
        return {target: load for target, (_, load) in self._figures.items()}

    async def refresh(self) -> None:
        """Polls every replica once."""
        await asyncio.gather(*(self._poll(target, stub) for target, stub in self._stubs.items()))

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not end the polling: stale figures only degrade the choice
                log.exception("polling the inference replicas' load failed")
            await asyncio.sleep(self._poll_s)

    async def _poll(self, target: str, stub: inference_pb2_grpc.InferenceServiceStub) -> None:
        try:
            reply = await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=self._stale_s / 2)
        except grpc.aio.AioRpcError as exc:
            if target not in self._silent:
                self._silent.add(target)
                log.warning(
                    "inference replica not answering its load", extra={"replica": target, "code": exc.code().name}
                )
            return
        if target in self._silent:
            self._silent.discard(target)
            log.info("inference replica answering its load again", extra={"replica": target})
        self._figures[target] = (time.monotonic(), replica_load(reply))
