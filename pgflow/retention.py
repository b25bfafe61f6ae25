"""Pruning finished runs: what Client.prune reports, and the cutoff it prunes by.

The engine deletes in small batches (`pgflow.prune_runs`, one transaction
each, skipping runs another transaction holds), so pruning a backlog never
holds a lock for long; the caller loops until a batch comes back short.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

DEFAULT_BATCH_SIZE = 200
MAX_BATCH_SIZE = 10_000


@dataclass(frozen=True)
class PruneResult:
    """Runs (and their tasks) deleted, or that would be with dry_run=True,
    all finished before `cutoff` (the database's clock)."""

    cutoff: datetime.datetime
    runs: int
    tasks: int
    batches: int
    dry_run: bool
    seconds: float  # wall time of the whole prune
    longest_batch_seconds: float  # the longest transaction (0 for a dry run)


def check_older_than(older_than: datetime.timedelta | datetime.datetime) -> None:
    """A negative age would prune runs that finish in the future: refuse it."""
    if isinstance(older_than, datetime.timedelta):
        if older_than < datetime.timedelta(0):
            raise ValueError(f"prune(): older_than must not be negative, got {older_than}")
    elif not isinstance(older_than, datetime.datetime):
        raise TypeError(f"prune(): older_than must be a timedelta (an age) or a datetime "
                        f"(a cutoff), got {older_than!r}")


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"prune(): batch_size must be an int from 1 to {MAX_BATCH_SIZE}, "
                         f"got {batch_size!r}")
