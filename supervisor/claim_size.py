"""How many tasks a round claims, from what the loop knows: pure arithmetic,
no I/O (the loop decides whether a claim is wanted at all)."""

from __future__ import annotations

# Seconds of work the prefetch buffer aims to hold.
PREFETCH_WINDOW = 0.05


def prefetch(limit: int, executors: int, typical_task_s: float | None) -> int:
    """Tasks to hold beyond what idle executors take: about PREFETCH_WINDOW
    of work at the executors' usual pace, at most `limit` (settings.prefetch).
    Tiny tasks get a deep buffer (large claims, few round trips); long ones
    almost none, so one supervisor does not sit on work that another, idle,
    could start. Before the first answer: one per executor."""
    if typical_task_s is None:
        return min(limit, executors)
    return min(limit, max(executors, int(executors * PREFETCH_WINDOW / typical_task_s)))


def claim_size(capacity: int, buffered: int, prefetch: int) -> int:
    """Enough for executors that would otherwise wait, plus the prefetch
    buffer, once the buffer is down to half (`capacity`: tasks executors
    would take now; `buffered`: claimed tasks not yet handed over)."""
    if capacity <= buffered and buffered > prefetch // 2:
        return 0
    return max(capacity + prefetch - buffered, 0)
