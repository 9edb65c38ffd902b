"""Per-key limits, shared by every gateway replica through the Redis-protocol server: requests
per minute, tokens per minute, requests in flight, and the models a key may use.

A chat request goes through them in this order, each refusal an error in OpenAI's shape:

- ``admit`` (before any work): a model the key may not use is 403 ``model_not_allowed``; a full
  set of concurrency slots is 429 ``concurrency_limit_exceeded``; one request too many in the
  last minute is 429 ``rate_limit_exceeded``.
- ``reserve`` (once the prompt is counted, before the first token reaches the client): prompt +
  ``max_tokens`` (x n), or prompt + ``tpm_default_reserve`` without it, must fit in the tokens
  left in the last minute, else 429 ``rate_limit_exceeded``.
- ``allow`` (while it streams): completion tokens beyond the reservation are reserved in steps of
  ``tpm_extend_step``; when the window has no more, the response stops there, before the piece of
  text that would pass the limit (a token, or a few when the client reads slower than the engine
  writes), and ends with a 429 error event. A long stream never overshoots.
- ``settle`` (at the end, also when the client went away): the unused part of the reservation is
  given back, the usage is recorded, the concurrency slot is freed.

Every 429 says when to retry (``Retry-After``). An unreachable Redis is 503 with Retry-After.

A request the key's limits let in answers with OpenAI's rate-limit headers, for each limit the key
has (requests and tokens per minute): ``x-ratelimit-limit-requests``, ``-remaining-requests``
(after this one) and ``-reset-requests`` (until the oldest request in the window leaves it, so one
more is allowed), and the ``-tokens`` trio (remaining: after this request's reservation; reset: until
the whole window is clear again). A 429 carries those of the limit that refused it.

How each limit is kept, and why:

- Requests per minute: the ``limits`` library's moving window (exact: one timestamp per request).
- Tokens per minute must be reserved and then settled, and ``limits`` has no way to give back part
  of a hit (a negative cost is undocumented, and upstream proposes to reject it). So tokens are
  counted in a sliding window of one-second buckets, one Redis hash per key (second -> tokens),
  by a Lua script: a reservation adds to the current second's bucket if the last 60 seconds leave
  room; a refund takes back from the buckets the request was charged to, as long as they are
  still in the window. Redis' own clock is used, so replicas agree on what "the last minute" is.
- Requests in flight: a semaphore, a sorted set of request ids scored by lease expiry. A request
  renews its lease while it runs and removes it when it ends; the lease only matters when a
  gateway dies with requests in flight. No library keeps this one.
- Envoy's rate limit filters do not fit: the local one counts per Envoy instance, the global one
  needs a separate rate-limit service, and neither knows a key's limits (resolved here, from the
  hashed key) or can give back tokens a request reserved and did not use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
import redis.asyncio as redis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from services.common.errors import MeshError
from services.common.keys import KeyLimits
from services.gateway.auth import Caller
from services.gateway.errors import RateLimitError
from services.gateway.pipeline import Accepted, ChatTurn, Delta, Done, Event
from services.gateway.settings import GatewaySettings
from services.gateway.usage import UsageStore

log = logging.getLogger(__name__)

WINDOW_S = 60
# Told to a client refused a concurrency slot: slots free when requests end, not on a clock.
CONCURRENCY_RETRY_S = 1

_TOKENS = "llmmesh:tpm:"
_STREAMS = "llmmesh:streams:"

# KEYS[1]: the key's token window (hash: second -> tokens). ARGV: limit, window, want, minimum.
# Grants min(want, room) when room >= minimum: {granted, second, room left, seconds until the
# window is clear}; else {0, seconds to wait, room left, seconds until the window is clear}.
_RESERVE = """
local now = tonumber(redis.call('TIME')[1])
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, minimum = tonumber(ARGV[3]), tonumber(ARGV[4])
local used, buckets = 0, {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do
  local second, tokens = tonumber(raw[i]), tonumber(raw[i + 1])
  if second <= now - window then
    redis.call('HDEL', KEYS[1], raw[i])
  else
    used = used + tokens
    table.insert(buckets, {second, tokens})
  end
end
local room = limit - used
if room >= minimum then
  local granted = math.min(want, room)
  redis.call('HINCRBY', KEYS[1], now, granted)
  redis.call('EXPIRE', KEYS[1], window + 1)
  return {granted, now, room - granted, window}
end
table.sort(buckets, function(a, b) return a[1] < b[1] end)
local clear = window
if #buckets > 0 then clear = buckets[#buckets][1] + window - now end
local left = room
for _, bucket in ipairs(buckets) do
  room = room + bucket[2]
  if room >= minimum then return {0, bucket[1] + window - now, left, clear} end
end
return {0, window, left, clear}
"""

# KEYS[1]: the key's token window. ARGV: window, then (second, tokens) pairs to take back from
# the buckets they were charged to (a bucket that left the window is left alone), or with
# second 0 to charge now.
_ADJUST = """
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local second, tokens = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if second == 0 then
    redis.call('HINCRBY', KEYS[1], now, tokens)
    redis.call('EXPIRE', KEYS[1], window + 1)
  elseif second > now - window then
    local held = tonumber(redis.call('HGET', KEYS[1], second))
    if held then redis.call('HINCRBY', KEYS[1], second, -math.min(held, tokens)) end
  end
end
return 0
"""

# KEYS[1]: the key's leases (sorted set: request id -> expiry, ms). ARGV: request id, limit,
# lease ms. Drops lapsed leases, then takes a slot if one is free: 1, else 0.
_ACQUIRE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Same keys and arguments: extends a lease that is still held.
_RENEW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return renewed
"""

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)

# Settlements still running after their request's task was cancelled (kept from the collector).
_finishing: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Limits:
    """What applies to one caller: its key's own limits, else the gateway's defaults (0: none)."""

    rpm: int
    tpm: int
    max_streams: int
    models: tuple[str, ...] = ()


def _limit_headers(kind: str, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    """OpenAI's rate-limit headers of one limit (`kind`: requests or tokens)."""
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, remaining)),
        f"x-ratelimit-reset-{kind}": f"{max(0, math.ceil(reset_s))}s",
    }


def _unavailable() -> MeshError:
    return MeshError(
        grpc.StatusCode.UNAVAILABLE, "Rate limiting is unavailable; retry shortly.", "rate_limiter_unavailable"
    )


def _model_not_allowed(model: str) -> MeshError:
    return MeshError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"This API key may not use the model `{model}`.",
        "model_not_allowed",
        param="model",
    )


class _Scripts:
    def __init__(self, client: redis.Redis) -> None:
        self.reserve = client.register_script(_RESERVE)
        self.adjust = client.register_script(_ADJUST)
        self.acquire = client.register_script(_ACQUIRE)
        self.renew = client.register_script(_RENEW)


class Limiter:
    def __init__(self, settings: GatewaySettings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.usage = UsageStore(client, settings.usage_retention_days)
        self.scripts = _Scripts(client)
        # The URL only names the flavour: connections come from the shared client's pool (a
        # documented option its type annotation leaves out).
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix="llmmesh:rpm",
            connection_pool=client.connection_pool,  # type: ignore[arg-type]
        )
        self._requests = MovingWindowRateLimiter(storage)

    def limits_of(self, caller: Caller) -> Limits:
        own = caller.key.limits if caller.key is not None else KeyLimits()
        s = self.settings
        return Limits(
            rpm=s.default_rpm if own.rpm is None else own.rpm,
            tpm=s.default_tpm if own.tpm is None else own.tpm,
            max_streams=s.default_max_streams if own.max_streams is None else own.max_streams,
            models=own.models,
        )

    async def admit(self, caller: Caller, model: str) -> Admission:
        """Lets a request in, or refuses it (403, 429, 503) before it does any work."""
        limits = self.limits_of(caller)
        if limits.models and model not in limits.models:
            raise _model_not_allowed(model)
        admission = Admission(self, caller, limits, model)
        try:
            if limits.max_streams and not await admission.take_slot():
                raise RateLimitError(
                    f"Concurrency limit reached: at most {limits.max_streams} requests of this API key at once. "
                    "Retry when one of them has finished.",
                    CONCURRENCY_RETRY_S,
                    "concurrency_limit_exceeded",
                )
            if limits.rpm:
                admission.headers.update(await self._count_request(admission.owner, limits.rpm))
        except _REDIS_DOWN:
            await admission.settle(0, 0)
            raise _unavailable() from None
        except RateLimitError:
            await admission.settle(0, 0)
            raise
        return admission

    async def _count_request(self, owner: str, rpm: int) -> dict[str, str]:
        """Counts one request; its rate-limit headers, or RateLimitError (with them)."""
        item = RateLimitItemPerMinute(rpm)
        allowed = await self._requests.hit(item, owner)
        stats = await self._requests.get_window_stats(item, owner)
        reset_s = stats.reset_time - time.time()
        headers = _limit_headers("requests", rpm, stats.remaining, reset_s)
        if allowed:
            return headers
        raise RateLimitError(
            f"Rate limit reached for requests per minute (RPM): limit {rpm}.",
            max(1, math.ceil(reset_s)),
            headers=headers,
        )

    async def limit(self, caller: Caller, turn: ChatTurn, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """The pipeline's events for `turn` within the caller's limits (see the module's
        docstring). Admission happens when the first event is asked for, before the pipeline
        starts; a refusal before the first event becomes an error response, a later one an error
        event in the stream. Closing this generator or cancelling its consumer cancels the
        engine request, and settles."""
        admission = await self.admit(caller, turn.model)
        sampling = turn.sampling
        completion_budget = sampling.max_tokens * max(sampling.n, 1) if sampling.HasField("max_tokens") else None
        prompt = completion = 0
        model = turn.model
        try:
            async for event in events:
                if isinstance(event, Accepted):
                    await admission.reserve(event.prompt_tokens, completion_budget)
                    prompt, model = event.prompt_tokens, event.backend_model
                    event.rate_limits = dict(admission.headers)
                elif isinstance(event, Delta):
                    await admission.allow(completion + event.tokens)
                    completion += event.tokens
                elif isinstance(event, Done):
                    # Settled before the client sees the end: its next request finds the room.
                    # Without a slot or tokens to give back, settling awaits nothing (the usage
                    # record is written behind): no task to shield it.
                    prompt, completion = event.prompt_tokens, event.completion_tokens
                    settling = admission.settle(prompt, completion, model)
                    await (_to_the_end(settling) if admission.holds else settling)
                yield event
        finally:
            await _to_the_end(_close(events), admission.settle(prompt, completion, model))


async def _close(events: AsyncIterator[Event]) -> None:
    """Closes the pipeline's generator; its `finally` cancels the engine request."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()


async def _to_the_end(*steps: Awaitable[None]) -> None:
    """Runs `steps` in order, to the end even if the calling task is being cancelled (a client
    that went away): the cancellation reaches the caller, not the steps."""

    async def run() -> None:
        for step in steps:
            await step

    task = asyncio.create_task(run())
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    await asyncio.shield(task)


class Admission:
    """One request's hold on its key's limits, from admission to settlement."""

    def __init__(self, limiter: Limiter, caller: Caller, limits: Limits, model: str) -> None:
        self._settings = limiter.settings
        self._redis = limiter.redis
        self._scripts = limiter.scripts
        self._usage = limiter.usage
        self.caller = caller
        self.limits = limits
        self.model = model
        self.id = uuid.uuid4().hex
        # Whose counters: the key's; a keyless request (keys not required) counts for its tenant.
        self.owner = caller.key_id or f"tenant:{caller.tenant}"
        self._prompt = 0
        self._reserved = False
        # Tokens taken from the window: (second, tokens) per grant, oldest first.
        self._grants: list[tuple[int, int]] = []
        self._retry_after_s = WINDOW_S
        # The x-ratelimit-* headers of the limits this request went through (module docstring).
        self.headers: dict[str, str] = {}
        self._renewal: asyncio.Task[None] | None = None
        self._settled = False

    @property
    def holds(self) -> bool:
        """Settling has Redis work to do: a concurrency slot to free, tokens to give back."""
        return self._renewal is not None or (self._reserved and bool(self.limits.tpm))

    @property
    def granted(self) -> int:
        return sum(tokens for _, tokens in self._grants)

    # -- requests in flight

    async def take_slot(self) -> bool:
        key = _STREAMS + self.owner
        lease_ms = int(self._settings.stream_lease_s * 1000)
        if not await self._scripts.acquire(keys=[key], args=[self.id, self.limits.max_streams, lease_ms]):
            return False
        self._renewal = asyncio.create_task(self._keep_slot(key, lease_ms))
        return True

    async def _keep_slot(self, key: str, lease_ms: int) -> None:
        while True:
            await asyncio.sleep(self._settings.stream_lease_s / 3)
            try:
                await self._scripts.renew(keys=[key], args=[self.id, self.limits.max_streams, lease_ms])
            except _REDIS_DOWN as exc:
                log.warning("concurrency lease not renewed", extra={"error": type(exc).__name__})

    # -- tokens per minute

    async def _take(self, want: int, minimum: int) -> bool:
        """Takes `want` tokens from the window, or as many as it has if that is `minimum` or more."""
        try:
            granted, when, left, clear_s = await self._scripts.reserve(
                keys=[_TOKENS + self.owner], args=[self.limits.tpm, WINDOW_S, want, minimum]
            )
        except _REDIS_DOWN:
            raise _unavailable() from None
        self.headers.update(_limit_headers("tokens", self.limits.tpm, int(left), int(clear_s)))
        if not granted:
            self._retry_after_s = max(1, int(when))
            return False
        self._grants.append((int(when), int(granted)))
        return True

    def _tokens_refused(self, stopped: bool) -> RateLimitError:
        where = " The response was stopped at the limit." if stopped else ""
        return RateLimitError(
            f"Rate limit reached for tokens per minute (TPM): limit {self.limits.tpm}.{where} "
            f"Try again in {self._retry_after_s}s.",
            self._retry_after_s,
            headers={k: v for k, v in self.headers.items() if k.endswith("-tokens")},
        )

    async def reserve(self, prompt_tokens: int, completion_tokens: int | None) -> None:
        """Reserves the prompt and the completion (`completion_tokens`, else the default reserve,
        at most what the limit leaves); raises RateLimitError when the window has not that room."""
        tpm = self.limits.tpm
        if tpm:
            if completion_tokens is None:
                completion_tokens = min(self._settings.tpm_default_reserve, tpm - prompt_tokens)
            want = prompt_tokens + max(completion_tokens, 1)
            if want > tpm:
                raise RateLimitError(
                    f"Request too large for tokens per minute (TPM): limit {tpm}, requested {want} "
                    f"({prompt_tokens} in the prompt). Send a shorter prompt or a smaller max_tokens.",
                    None,
                )
            if not await self._take(want, want):
                raise self._tokens_refused(stopped=False)
        self._prompt = prompt_tokens
        self._reserved = True

    async def allow(self, completion_tokens: int) -> None:
        """Lets the completion reach `completion_tokens` (all of it so far), reserving more when
        it outgrows the reservation; raises RateLimitError when the window has no more."""
        if not self.limits.tpm:
            return
        missing = self._prompt + completion_tokens - self.granted
        if missing > 0 and not await self._take(max(missing, self._settings.tpm_extend_step), missing):
            raise self._tokens_refused(stopped=True)

    async def _settle_tokens(self, used: int) -> None:
        """Gives back what was reserved and not used, newest grants first (the unused part is
        the tail); charges what was used beyond the reservation (a count that came out higher)."""
        excess = self.granted - used
        adjustments: list[int] = [0, -excess] if excess < 0 else []
        for second, tokens in reversed(self._grants):
            if excess <= 0:
                break
            adjustments += [second, min(tokens, excess)]
            excess -= tokens
        if adjustments:
            await self._scripts.adjust(keys=[_TOKENS + self.owner], args=[WINDOW_S, *adjustments])

    # -- the end

    async def settle(self, prompt_tokens: int, completion_tokens: int, model: str = "") -> None:
        """Ends the request's hold: frees its concurrency slot, gives back the tokens it reserved
        and did not use, records its usage (if it got as far as a reservation). Never raises: the
        client has its answer, and a failure is logged. Settling again does nothing."""
        if self._settled:
            return
        self._settled = True
        if self._renewal is not None:
            self._renewal.cancel()
            await _logged("release", self._redis.zrem(_STREAMS + self.owner, self.id))
        if not self._reserved:
            return
        if self.limits.tpm:
            await _logged("refund", self._settle_tokens(prompt_tokens + completion_tokens))
        self._usage.record(self.caller, model or self.model, prompt_tokens, completion_tokens)


async def _logged(step: str, work: Awaitable[object]) -> None:
    """Awaits a step of a settlement; Redis being down is logged, not raised."""
    try:
        await work
    except _REDIS_DOWN as exc:
        log.warning("settling a request failed", extra={"step": step, "error": type(exc).__name__})
