"""What the demo reads about its batch of runs: progress while they run, timings after."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg.rows

from pgflow import Client, queries


@dataclass(frozen=True)
class StepProgress:
    step_slug: str
    queued: int
    running: int
    completed: int
    failed: int
    failed_attempts: int


@dataclass(frozen=True)
class Progress:
    total: int
    runs: dict[str, int]  # by status
    steps: list[StepProgress]

    @property
    def finished(self) -> int:
        return sum(n for status, n in self.runs.items() if status != "started")

    @property
    def done(self) -> bool:
        return self.finished >= self.total


@dataclass(frozen=True)
class StepTiming:
    step_slug: str
    tasks: int
    attempts: int
    failed_attempts: int
    p50_s: float | None
    max_s: float | None
    example_error: str | None


@dataclass(frozen=True)
class Timings:
    runs: dict[str, int]
    p50_run_s: float | None
    max_run_s: float | None
    span_s: float | None
    steps: list[StepTiming]


def _ids(run_ids: Sequence[uuid.UUID]) -> dict[str, list[uuid.UUID]]:
    return {"run_ids": list(run_ids)}


def _runs_by_status(client: Client, run_ids: Sequence[uuid.UUID]) -> dict[str, int]:
    rows = client.connection().execute(queries.load("batch_runs"), _ids(run_ids)).fetchall()
    return {status: count for status, count in rows}


def progress(client: Client, run_ids: Sequence[uuid.UUID]) -> Progress:
    conn = client.connection()
    with conn.cursor(row_factory=psycopg.rows.class_row(StepProgress)) as cur:
        steps = cur.execute(queries.load("batch_steps"), _ids(run_ids)).fetchall()
    return Progress(len(run_ids), _runs_by_status(client, run_ids), steps)


def timings(client: Client, run_ids: Sequence[uuid.UUID]) -> Timings:
    conn = client.connection()
    with conn.cursor(row_factory=psycopg.rows.class_row(StepTiming)) as cur:
        steps = cur.execute(queries.load("batch_timings"), _ids(run_ids)).fetchall()
    row = conn.execute(queries.load("batch_durations"), _ids(run_ids)).fetchone()
    assert row is not None
    _, p50, longest, span = row
    return Timings(_runs_by_status(client, run_ids), p50, longest, span, steps)
