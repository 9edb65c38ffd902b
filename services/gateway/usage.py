"""Usage accounting: prompt and completion tokens and requests per API key, tenant and model, per
UTC day, in the Redis-protocol server every gateway replica shares; and GET /v1/usage, which
shows a caller its own key's or its own tenant's figures, never anyone else's.

A day of one key (or tenant) is one hash, ``llmmesh:usage:<key|tenant>:<id>:<YYYY-MM-DD>``, with
a field per figure and model (``prompt_tokens:<model>``, ``completion_tokens:<model>``,
``requests:<model>``), read with one HGETALL. The hashes expire `retention_days` after their
last write.

Records are written behind the answer, by group commit: a finished request adds its figures to
the replica's pending counts and the client has its answer at once; one writer task sends what
is pending in one script call, and what arrives meanwhile goes in the next call. At
one request at a time every record is written on its own, right after its answer; under load
many requests share one Redis round trip. A read of usage waits until what this replica has
counted before it is written (a client reads its own usage right after a reply and finds it);
another replica's records are at most one round trip behind. When Redis cannot be reached the
counts stay pending and are written once it is back; on shutdown the gateway writes them before
it exits (bounded by its grace period).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import prometheus_client
import redis.asyncio as redis
from fastapi import APIRouter, Depends, Query

from services.gateway.auth import Caller
from services.gateway.errors import APIError

log = logging.getLogger(__name__)

_PREFIX = "llmmesh:usage:"
FIGURES = ("prompt_tokens", "completion_tokens", "requests")
DEFAULT_DAYS = 7
# How long a read of usage waits for this replica's records to be written.
READ_WAIT_S = 2.0
MAX_DAYS = 400

Scope = Literal["key", "tenant"]


@dataclass(frozen=True)
class Usage:
    """What one model served one key or tenant on one day."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0


def _record_key(scope: Scope, owner: str, day: dt.date) -> str:
    return f"{_PREFIX}{scope}:{owner}:{day.isoformat()}"


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


# KEYS: the day hashes. ARGV[1]: their lifetime (s), then per hash: how many fields, and that
# many (field, increment) pairs.
_RECORD = """
local ttl, at = tonumber(ARGV[1]), 2
for _, key in ipairs(KEYS) do
  local fields = tonumber(ARGV[at])
  for i = 1, fields do
    redis.call('HINCRBY', key, ARGV[at + 2 * i - 1], ARGV[at + 2 * i])
  end
  redis.call('EXPIRE', key, ttl)
  at = at + 1 + 2 * fields
end
return #KEYS
"""

# Between two tries to write while Redis cannot be reached.
RETRY_S = (0.1, 2.0)

WRITES = prometheus_client.Counter(
    "llmmesh_gateway_usage_writes_total",
    "Writes of usage records to Redis, by outcome (written; retried: Redis unreachable; dropped: refused).",
    ["outcome"],
)
PENDING = prometheus_client.Gauge(
    "llmmesh_gateway_usage_pending_records", "Usage records counted and not yet written (grows while Redis is away)."
)


class UsageStore:
    def __init__(self, client: redis.Redis, retention_days: int) -> None:
        self._redis = client
        self._retention_s = retention_days * 86400
        self._script = client.register_script(_RECORD)
        # (day hash, field) -> increment, counted and not yet written.
        self._pending: Counter[tuple[str, str]] = Counter()
        # Records counted so far, and how many of them are written (in order: a batch holds
        # every record counted before it was taken).
        self._counted = 0
        self._written = 0
        self._writer: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()

    def record(self, caller: Caller, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Counts one request, under its tenant and (when it came with one) its key. Counted once
        the answer is made and written behind it (see the module's docstring): never the
        client's wait, never its failure."""
        figures = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "requests": 1}
        day = today()
        owners: list[tuple[Scope, str]] = [("tenant", caller.tenant)]
        if caller.key_id:
            owners.append(("key", caller.key_id))
        for scope, owner in owners:
            record = _record_key(scope, owner, day)
            for figure, value in figures.items():
                self._pending[record, f"{figure}:{model}"] += value
        self._counted += 1
        PENDING.set(self.pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        """Writes what is pending, batch after batch, until nothing is; retries while Redis is away."""
        failures = 0
        while self._pending:
            batch, upto = self._pending, self._counted
            self._pending = Counter()
            try:
                await self._send(batch)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._pending.update(batch)  # kept for the next try (counts only add: order does not matter)
                failures += 1
                WRITES.labels("retried").inc()
                if failures == 1:
                    log.warning("usage not written yet; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(min(RETRY_S[0] * 2 ** (failures - 1), RETRY_S[1]))
                continue
            except redis.RedisError as exc:
                # Refused by the server (not a network failure): trying again would be refused too.
                log.error("usage not written", extra={"error": str(exc), "fields": len(batch)})
                WRITES.labels("dropped").inc()
            else:
                WRITES.labels("written").inc()
            failures = 0
            async with self._progress:
                self._written = upto
                self._progress.notify_all()
            PENDING.set(self.pending)

    async def _send(self, batch: Counter[tuple[str, str]]) -> None:
        by_hash: dict[str, list[str | int]] = {}
        for (record, field), value in batch.items():
            by_hash.setdefault(record, []).extend((field, value))
        args: list[str | int] = [self._retention_s]
        for pairs in by_hash.values():
            args += [len(pairs) // 2, *pairs]
        await self._script(keys=list(by_hash), args=args)

    @property
    def pending(self) -> int:
        """Records counted and not yet written."""
        return self._counted - self._written

    async def written(self, timeout_s: float) -> bool:
        """Waits until every record counted before the call is written (at most `timeout_s`);
        False when they are not by then (Redis unreachable)."""
        wanted = self._counted
        try:
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(lambda: self._written >= wanted)
        except TimeoutError:
            return False
        return True

    async def read(self, scope: Scope, owner: str, days: list[dt.date]) -> dict[dt.date, list[Usage]]:
        """Each day's usage by model (models in name order; a day without any: empty)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(_record_key(scope, owner, day))
            raw_days: list[dict[str, str]] = await pipe.execute()
        found: dict[dt.date, list[Usage]] = {}
        for day, raw in zip(days, raw_days, strict=True):
            by_model: dict[str, dict[str, int]] = {}
            for field, value in raw.items():
                figure, _, model = field.partition(":")
                if figure in FIGURES:
                    by_model.setdefault(model, {})[figure] = int(value)
            found[day] = [Usage(model, **by_model[model]) for model in sorted(by_model)]
        return found


def _days(start_date: dt.date | None, end_date: dt.date | None, days: int | None) -> list[dt.date]:
    """The days asked for: `start_date` (or `days` days) up to `end_date` (or today)."""
    if days is not None and start_date is not None:
        raise APIError.invalid("Give either 'days' or 'start_date', not both.", "days")
    end = end_date or today()
    try:
        start = start_date or end - dt.timedelta(days=(days or DEFAULT_DAYS) - 1)
    except OverflowError:  # the days before `end_date` reach past the first day of the calendar
        start = dt.date.min
    if start > end:
        raise APIError.invalid("'start_date' must not be after 'end_date'.", "start_date")
    count = (end - start).days + 1
    if count > MAX_DAYS:
        raise APIError.invalid(f"At most {MAX_DAYS} days can be read at once.", "start_date")
    return [start + dt.timedelta(days=i) for i in range(count)]


def _bucket(day: dt.date, usage: list[Usage]) -> dict[str, Any]:
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    return {
        "object": "usage.bucket",
        "date": day.isoformat(),
        "start_time": start,
        "end_time": start + 86400,
        "results": [
            {
                "object": "usage.result",
                "model": u.model,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
                "requests": u.requests,
            }
            for u in usage
        ],
    }


def _totals(buckets: Iterator[Usage]) -> dict[str, int]:
    totals = dict.fromkeys(FIGURES, 0)
    for usage in buckets:
        for figure in FIGURES:
            totals[figure] += getattr(usage, figure)
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return totals


def create_router(store: UsageStore, caller: Callable[..., Awaitable[Caller]]) -> APIRouter:
    router = APIRouter(tags=["usage"])

    @router.get("/v1/usage")
    async def get_usage(
        scope: Scope = "key",
        start_date: dt.date | None = None,
        end_date: dt.date | None = None,
        days: int | None = Query(default=None, ge=1, le=MAX_DAYS),
        caller_: Caller = Depends(caller),
    ) -> dict[str, Any]:
        """The caller's usage per UTC day and model: its own key's (`scope=key`, the default) or
        its whole tenant's (`scope=tenant`)."""
        if scope == "key" and caller_.key is None:
            raise APIError.invalid("This request has no API key: ask for scope=tenant.", "scope")
        owner = caller_.key_id if scope == "key" else caller_.tenant
        wanted = _days(start_date, end_date, days)
        # This replica's own records first: a client reads its usage right after its replies.
        await store.written(READ_WAIT_S)
        found = await store.read(scope, owner, wanted)
        return {
            "object": "list",
            "scope": scope,
            "tenant": caller_.tenant,
            "key_id": caller_.key_id if scope == "key" else None,
            "start_date": wanted[0].isoformat(),
            "end_date": wanted[-1].isoformat(),
            "data": [_bucket(day, usage) for day, usage in found.items()],
            "totals": _totals(u for usage in found.values() for u in usage),
        }

    return router
