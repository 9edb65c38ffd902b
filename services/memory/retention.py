"""Retention: long-term memories kept per a tenant's policy (an age, a count per end user, a
count per session; all off by default), so that a long-running store stays bounded. What ages
out is erased as a deletion erases it (MemoryCore.erase): out of every vector, marked against
an indexer that still holds its turn, and blanked in the stored history.

A sweep runs every `every_s` in each memory replica; two replicas sweeping at once erase the
same memories twice, which is harmless (erasure is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import Counter
from pydantic import BaseModel, Field

from services.memory.core import MemoryCore
from services.memory.vectors import MemoryRecord

log = logging.getLogger(__name__)

AGED_OUT = Counter(
    "llmmesh_memory_retention_erased_total", "Memories erased by retention, by rule (age, user, session).", ["rule"]
)
# Memories erased per rule and owner in one step; a sweep goes on until none is over its policy.
BATCH = 500


class RetentionPolicy(BaseModel):
    """How long and how many long-term memories a tenant keeps; 0: no limit."""

    max_age_days: float = Field(default=0, ge=0)
    max_per_user: int = Field(default=0, ge=0)
    max_per_session: int = Field(default=0, ge=0)

    @property
    def active(self) -> bool:
        return bool(self.max_age_days or self.max_per_user or self.max_per_session)


@dataclass
class Retention:
    core: MemoryCore
    default: RetentionPolicy
    tenants: Mapping[str, RetentionPolicy]
    every_s: float

    @property
    def active(self) -> bool:
        return self.default.active or any(p.active for p in self.tenants.values())

    def policy(self, tenant: str) -> RetentionPolicy:
        return self.tenants.get(tenant, self.default)

    async def run(self) -> None:
        """Forever: a sweep, then a pause; a failed sweep is logged and tried again next time."""
        while True:
            try:
                erased = await self.sweep()
                if erased:
                    log.info("retention: memories erased", extra={"memories": erased})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(self.every_s)

    async def sweep(self, now: float | None = None) -> int:
        """Erases what each tenant's policy no longer keeps; returns how many memories."""
        now = time.time() if now is None else now
        vectors = self.core.vectors
        erased = 0
        for tenant in sorted(await vectors.counts("tenant")):
            policy = self.policy(tenant)
            if policy.max_age_days:
                before = int(now - policy.max_age_days * 86_400)
                while found := await vectors.oldest(tenant, limit=BATCH, before=before):
                    erased += await self._erase(tenant, "age", found)
            if policy.max_per_user:
                for user, count in (await vectors.counts("user", tenant)).items():
                    if user and count > policy.max_per_user:
                        found = await vectors.oldest(tenant, limit=count - policy.max_per_user, user=user)
                        erased += await self._erase(tenant, "user", found)
            if policy.max_per_session:
                for session_id, count in (await vectors.counts("session_id", tenant)).items():
                    if count > policy.max_per_session:
                        found = await vectors.oldest(
                            tenant, limit=count - policy.max_per_session, session_id=session_id
                        )
                        erased += await self._erase(tenant, "session", found)
        return erased

    async def _erase(self, tenant: str, rule: str, records: list[MemoryRecord]) -> int:
        for start in range(0, len(records), BATCH):
            await self.core.erase(tenant, records[start : start + BATCH])
        AGED_OUT.labels(rule).inc(len(records))
        return len(records)
