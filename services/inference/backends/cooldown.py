"""Which backends to skip for a while: after `failures` failures in a row a backend cools down
for `cooldown_s` seconds, during which no request is sent to it.

Once the time is up it is tried again; a success clears its record, and since its count is
still at the limit, one more failure puts it straight back to cooling (a half-open circuit
breaker, in the usual terms). State is per inference replica and in memory: a restart forgets
it, which costs at most `failures` failed attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    until: float = 0.0  # monotonic time the cooldown ends; 0: not cooling


class Cooldowns:
    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or cooldown_s < 0:
            raise ValueError("failures must be at least 1 and cooldown_s not negative")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def remaining_s(self, backend: str) -> float:
        """Seconds the backend is still skipped for; 0: it may be tried."""
        record = self._records.get(backend)
        return max(0.0, record.until - self._clock()) if record else 0.0

    def cooling(self, backend: str) -> bool:
        return self.remaining_s(backend) > 0

    def failed(self, backend: str) -> bool:
        """Counts a failure; True when it starts a cooldown."""
        record = self._records.setdefault(backend, _Record())
        record.failures += 1
        if record.failures >= self.failures and self.cooldown_s > 0:
            record.until = self._clock() + self.cooldown_s
            return True
        return False

    def succeeded(self, backend: str) -> None:
        self._records.pop(backend, None)
