"""Client.wait's loop: re-read a run until it is finished, woken by the
engine's NOTIFY on `pgflow_runs` when there is a connection that listens,
polling with backoff when there is none (a transaction pooler without
listen_dsn)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import psycopg

from pgflow.run import Run

RUNS_CHANNEL = "pgflow_runs"
# How often the run is re-read when no notification came (lost
# notifications, a dropped listener); notifications wake it sooner.
WAIT_RECHECK_SECONDS = 2.0
# Without notifications the run is re-read after 50 ms, then twice as long
# each time up to this.
WAIT_POLL_SECONDS = 0.5
WAIT_FIRST_POLL_SECONDS = 0.05


def until_finished(read_run: Callable[[], Run], listener: psycopg.Connection | None,
                   run_id: uuid.UUID, timeout: float, deadline: float) -> Run:
    """The run once finished; TimeoutError at `deadline` (monotonic)."""
    if listener is not None:
        listener.execute(f"listen {RUNS_CHANNEL}")
    poll = WAIT_FIRST_POLL_SECONDS
    try:
        while True:
            run = read_run()
            if run.finished:
                return run
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"Run {run_id} of flow {run.flow_slug!r} is still {run.status} "
                    f"after {timeout:g}s"
                )
            if listener is None:
                time.sleep(min(remaining, poll))
                poll = min(poll * 2, WAIT_POLL_SECONDS)
            else:
                _wait_for_mention(listener, str(run_id), min(remaining, WAIT_RECHECK_SECONDS))
    finally:
        if listener is not None and not (listener.closed or listener.broken):
            listener.execute(f"unlisten {RUNS_CHANNEL}")


def _wait_for_mention(conn: psycopg.Connection, run_id: str, seconds: float) -> None:
    """Return when a runs notification names run_id (or names none), or after `seconds`.

    psycopg keeps notifications that arrive during other statements and hands
    them out first, so none is missed between reading the run and waiting here.
    """
    for notify in conn.notifies(timeout=seconds):
        if not notify.payload or run_id in notify.payload:
            return
