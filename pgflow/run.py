"""Runs and step states as applications read them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class StepState:
    step_slug: str
    status: str
    output: Any
    error: str | None
    attempts: int
    task_count: int | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    # The error of every failed attempt of the step's tasks, oldest first:
    # {"attempt", "error", "at", "type", "traceback", "task_index"}, and
    # "retry" (how many retries the run had had) on attempts made before the
    # run was retried. Type and traceback are there when the handler raised.
    errors: list[dict[str, Any]] = field(default_factory=list)
    # Set when status is "skipped": condition_unmet, dependency_skipped or handler_failed.
    skip_reason: str | None = None
    skipped_at: datetime | None = None


@dataclass(frozen=True)
class Run:
    run_id: uuid.UUID
    flow_slug: str
    status: str
    input: Any
    output: Any
    error: str | None
    failed_step: str | None
    started_at: datetime
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    steps: dict[str, StepState] = field(default_factory=dict)
    retry_count: int = 0  # times Client.retry_run resumed it
    retried_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


RUN_STATUSES = ("started", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class RunSummary:
    """A run as Client.list_runs returns it: no input, output or steps."""

    run_id: uuid.UUID
    flow_slug: str
    status: str
    error: str | None
    failed_step: str | None
    started_at: datetime
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    duration_s: float | None  # start to finish; None while it runs
    key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def finished_at(self) -> datetime | None:
        return self.completed_at or self.failed_at or self.cancelled_at
