"""How long tasks take here, learned from the executors' answers: per step
(is a task short enough to queue behind another in the same executor?) and
overall (how deep should the prefetch buffer be?). Pure: exponentially
weighted moving averages, no I/O."""

from __future__ import annotations

# Tasks are queued behind a running one in the same executor only when both
# steps usually take less than this: queuing tiny tasks saves a loop turn
# each, and a task longer than this would make the ones behind it wait.
SHORT_TASK_SECONDS = 0.005
# A task costs at least a round of frames to and from an executor.
MIN_TASK_SECONDS = 0.0001
WEIGHT = 0.2


class Pace:
    def __init__(self) -> None:
        self._by_step: dict[tuple[str, str], float] = {}
        self._overall: float | None = None

    def learn(self, flow: str, step: str, seconds: float) -> None:
        key = (flow, step)
        before = self._by_step.get(key)
        self._by_step[key] = seconds if before is None else before + WEIGHT * (seconds - before)
        seconds = max(seconds, MIN_TASK_SECONDS)
        overall = self._overall
        self._overall = seconds if overall is None else overall + WEIGHT * (seconds - overall)

    def is_short(self, flow: str, step: str) -> bool:
        """The step usually takes under SHORT_TASK_SECONDS (unknown: not short)."""
        typical = self._by_step.get((flow, step))
        return typical is not None and typical < SHORT_TASK_SECONDS

    @property
    def typical(self) -> float | None:
        """How long tasks usually take here (any step), or None before the first."""
        return self._overall
