"""The supervisor's working connection: claims, answers, releases, heartbeats.

Every call is timed for metrics. A connection error closes the connection
and raises DatabaseUnavailable; the loop keeps what it could not write and
reconnects with backoff (the attempt fence makes writing late answers safe).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors

from pgflow import ClaimedTask, db, worker_api
from pgflow.worker_api import Answered
from supervisor.metrics import Metrics

T = TypeVar("T")

LOCK_TIMEOUT_MS = 10_000
STATEMENT_TIMEOUT_MS = 60_000


class DatabaseUnavailable(Exception):
    """The connection is gone; the caller retries after reconnecting."""


class Store:
    def __init__(
        self,
        dsn: str,
        worker_id: uuid.UUID,
        flows: Sequence[str],
        hostname: str,
        lease_grace: float,
        metrics: Metrics,
    ) -> None:
        self._dsn = dsn
        self.worker_id = worker_id
        self.flows = list(flows)
        self._hostname = hostname
        self._lease_grace = lease_grace
        self._metrics = metrics
        self.conn: psycopg.Connection | None = None

    @property
    def connected(self) -> bool:
        return db.is_live(self.conn)

    def connect(self) -> None:
        """Connect and (re-)register this worker; raises DatabaseUnavailable."""
        self.close()
        try:
            self.conn = db.connect(
                self._dsn, f"pgflow supervisor {self._hostname}", connect_timeout=5,
                # The loop must never hang on a lock someone else holds.
                options=f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        self._call("register", lambda c: worker_api.register_worker(
            c, self.worker_id, self._hostname, os.getpid(), self.flows))

    def close(self) -> None:
        db.close_quietly(self.conn)
        self.conn = None

    def _call(self, operation: str, work: Callable[[psycopg.Connection], T]) -> T:
        if not self.connected:
            raise DatabaseUnavailable("not connected")
        assert self.conn is not None
        try:
            with self._metrics.db_timer(operation):
                return work(self.conn)
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as exc:
            # Lost connection, or a statement/lock timeout (something held a
            # lock on our rows): either way, start over on a new connection.
            self.close()
            raise DatabaseUnavailable(str(exc)) from exc

    def claim(self, limit: int) -> tuple[list[ClaimedTask], float | None]:
        def claim(conn: psycopg.Connection) -> tuple[list[ClaimedTask], float | None]:
            # A claim lost in a crash only leaves the task queued again (its
            # token fences the lost claim's answer): no need to wait for the flush.
            with conn.transaction():
                conn.execute("set local synchronous_commit = off")
                tasks = worker_api.claim(conn, self.worker_id, self.flows, limit, self._lease_grace)
            return tasks, worker_api.seconds_until_next_task(conn, self.flows)

        return self._call("claim", claim)

    def complete(self, answers: Iterable[tuple[int, int, Any]]) -> Answered:
        return self._call("complete", lambda c: worker_api.complete(c, answers))

    def fail(self, answers: Iterable[tuple[int, int, str]]) -> Answered:
        return self._call("fail", lambda c: worker_api.fail(c, answers))

    def release(self, tasks: Iterable[tuple[int, int]]) -> set[int]:
        return self._call("release", lambda c: worker_api.release(c, tasks))

    def heartbeat(self, tasks: Sequence[tuple[int, int]]) -> set[int]:
        return self._call("heartbeat", lambda c: worker_api.heartbeat(
            c, self.worker_id, tasks, self._lease_grace))

    def requeue_expired(self) -> int:
        return self._call("requeue", worker_api.requeue_expired)

    def queue_stats(self) -> dict[str, tuple[int, float]]:
        return self._call("queue_stats", lambda c: worker_api.queue_stats(c, self.flows))

    def notification_queue_usage(self) -> float:
        return self._call("queue_stats", worker_api.notification_queue_usage)

    def server_warnings(self) -> list[str]:
        return self._call("server_check", worker_api.server_warnings)

    def stop_worker(self) -> None:
        self._call("stop", lambda c: worker_api.stop_worker(c, self.worker_id))
