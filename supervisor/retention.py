"""When a supervisor prunes finished runs (`--retention`), as pure decisions.

Time is cut into ticks (a sixtieth of the retention, between 1 s and 60 s).
At the start of each tick every supervisor asks `pgflow.retention_tick`;
the first to come by takes the tick and prunes one batch, the others are
told no. The winner asks again soon while its batches come back full (a
backlog), so a large backlog goes in small transactions, one per round
trip of its own, without holding anything between them; otherwise it waits
for the next tick like everyone else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BATCH_RUNS = 200
# Between two full batches: a backlog drains at up to BATCH_RUNS / BACKLOG_PAUSE
# runs per second, leaving the database to the work in between.
BACKLOG_PAUSE = 0.2
MIN_TICK = 1.0
MAX_TICK = 60.0
# The first tick comes this long after start, so pruning never slows a start.
FIRST_DELAY = 5.0


@dataclass
class RetentionChore:
    older_than: float  # seconds
    batch_runs: int = BATCH_RUNS

    @property
    def tick(self) -> float:
        return min(MAX_TICK, max(MIN_TICK, self.older_than / 60))

    def first_at(self, monotonic: float) -> float:
        return monotonic + FIRST_DELAY

    def next_at(self, monotonic: float, wall: float, pruned: int | None) -> float:
        """When to ask again: soon after a full batch, else at the start of the
        next tick (plus a little jitter, so supervisors do not all ask at once).
        `pruned` is None when the last ask failed or another supervisor held the tick."""
        if pruned is not None and pruned >= self.batch_runs:
            return monotonic + BACKLOG_PAUSE
        until_next_tick = self.tick - (wall % self.tick)
        return monotonic + until_next_tick + random.uniform(0, min(1.0, self.tick / 10))
