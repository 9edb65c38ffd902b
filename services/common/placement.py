"""Where a generation runs: the rule shared by the inference service (which of its engines) and
the gateway (which inference replica).

A conversation's next turn repeats its whole prompt so far. The engine that ran the previous
turn still holds that prefix in its KV cache (vLLM's prefix caching) and skips computing it
again; any other engine starts from nothing. So a request carrying an affinity key (a hash of
tenant and session) goes where that key went last, unless that target is overloaded: queueing
behind a full batch costs more than recomputing a prefix. Everything else goes to the least
loaded target: fewest waiting, then fewest running, then the least KV cache in use.

The figures come from the engines' own scheduler (waiting requests, KV cache use), reported
after each step and never trusted past 2 s, and from the requests the inference service handed
each engine and has not seen finish ("outstanding"). An engine runs nothing else, so those bound
what it holds: a request its scheduler has not reported yet counts as running (vLLM takes a new
request into its batch at the next step unless the batch is full, and then reports it waiting),
so a burst arriving between two reports spreads instead of piling onto one engine; one that
finished since the last report no longer counts at all. Only the scheduler says a request
waits: a guess must not make a target look overloaded and send a session away from its cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

# Figures older than this are not trusted (an engine reports after every step it runs).
STALE_S = 2.0

Reason = Literal["affinity", "least_loaded", "only"]
REASONS: tuple[Reason, ...] = ("affinity", "least_loaded", "only")


@dataclass(frozen=True)
class Load:
    """A target's load as placement reads it."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    # Sequences the target runs at once; 0: no fixed limit.
    max_num_seqs: int = 0

    @classmethod
    def of(cls, outstanding: int, waiting: int, kv_cache_usage: float, max_num_seqs: int = 0) -> Load:
        """An engine's load from the `outstanding` requests handed to it and its scheduler's
        `waiting` (see the module docstring): those not waiting are running."""
        waiting = min(waiting, outstanding)
        return cls(outstanding - waiting, waiting, kv_cache_usage, max_num_seqs)

    @property
    def order(self) -> tuple[int, int, float]:
        return (self.waiting, self.running, self.kv_cache_usage)


@dataclass(frozen=True)
class Overload:
    """When a target is too busy to keep a conversation: requests are queueing in it, its batch is
    (nearly) full, or its KV cache is nearly full (new requests would evict cached prefixes or
    preempt running ones)."""

    running_share: float = 0.9
    kv_cache_usage: float = 0.9

    def __call__(self, load: Load) -> bool:
        full_batch = load.max_num_seqs > 0 and load.running >= self.running_share * load.max_num_seqs
        return load.waiting > 0 or full_batch or load.kv_cache_usage >= self.kv_cache_usage


class AffinityMap:
    """The target each affinity key went to last, for the `capacity` most recent keys."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._last: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def get(self, key: str) -> str | None:
        return self._last.get(key)

    def remember(self, key: str, target: str) -> None:
        self._last[key] = target
        self._last.move_to_end(key)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)


def choose(loads: Mapping[str, Load], key: str, affinity: AffinityMap, overloaded: Overload) -> tuple[str, Reason]:
    """The target for a request with affinity `key` ("" for none) among `loads` (in preference
    order on ties), and why; the choice is remembered for the key."""
    if not loads:
        raise ValueError("no target to place the request on")
    last = affinity.get(key) if key else None
    reason: Reason
    if len(loads) == 1:
        target, reason = next(iter(loads)), "only"
    elif last is not None and last in loads and not overloaded(loads[last]):
        target, reason = last, "affinity"
    else:
        target, reason = min(loads, key=lambda name: loads[name].order), "least_loaded"
    if key:
        affinity.remember(key, target)
    return target, reason
