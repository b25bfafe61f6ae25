"""Pure timing decisions: reconnect backoff and crash-loop respawn delays."""

from __future__ import annotations


class Backoff:
    """Exponential delays: base, 2*base, 4*base, ... capped; reset() after success."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.base * (2**self.failures), self.cap)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class RespawnPolicy:
    """How long to wait before forking a replacement executor.

    A process that dies on its own, without a task, soon after it started is
    part of a crash loop (it cannot even start: no memory, a broken
    environment): replacements then back off exponentially. Deaths the
    supervisor caused (timeouts, recycling, scaling), deaths while running a
    task (the task's retries handle those) and deaths of long-lived processes
    respawn at once.
    """

    def __init__(self, healthy_after: float = 5.0, base: float = 0.1, cap: float = 10.0) -> None:
        self.healthy_after = healthy_after
        self._backoff = Backoff(base, cap)

    def delay_after_exit(self, lifetime: float, crashed: bool) -> float:
        if not crashed or lifetime >= self.healthy_after:
            self._backoff.reset()
            return 0.0
        return self._backoff.next_delay()

    @property
    def crash_streak(self) -> int:
        return self._backoff.failures
