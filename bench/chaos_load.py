"""The soak's load: runs of the chaos flows started one after another with
deterministic ids and inputs (chaos_flows.input_for), keeping a bounded
number unfinished so that the backlog, and with it the recovery time at the
end, stays bounded. Every start is retried with the same run id until it
succeeds, so an outage never leaves a run the soak does not know about."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from chaos_flows import input_for, run_id_for
from psycopg.types.json import Jsonb


@dataclass
class StartedRun:
    number: int
    run_id: uuid.UUID
    flow: str
    input: dict[str, Any]
    started_at: float


class Producer:
    def __init__(self, dsn: str, seed: int, max_unfinished: int) -> None:
        self.dsn = dsn
        self.seed = seed
        self.max_unfinished = max_unfinished
        self.runs: dict[uuid.UUID, StartedRun] = {}
        self.unfinished: set[uuid.UUID] = set()
        self.next_number = 0
        self.errors = 0
        self._conn: psycopg.Connection | None = None
        self._next_poll = 0.0

    def step(self, now: float, producing: bool) -> None:
        """Start runs while fewer than max_unfinished are unfinished; forget
        the finished. Database errors (an outage) are counted and retried."""
        try:
            if now >= self._next_poll:
                self._next_poll = now + 0.25
                self._poll()
            while producing and len(self.unfinished) < self.max_unfinished:
                self._start_next()
        except psycopg.Error:
            self.errors += 1
            self._drop_connection()

    def finished(self) -> bool:
        return not self.unfinished

    def close(self) -> None:
        self._drop_connection()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                         application_name="chaos producer")
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _start_next(self) -> None:
        number = self.next_number
        flow, input = input_for(self.seed, number)
        run_id = run_id_for(self.seed, number)
        self._connection().execute("select pgflow.start_flow(%s, %s, %s)",
                                   (flow, Jsonb(input), run_id))
        self.runs[run_id] = StartedRun(number, run_id, flow, input, time.time())
        self.unfinished.add(run_id)
        self.next_number += 1

    def _poll(self) -> None:
        if not self.unfinished:
            return
        rows = self._connection().execute(
            "select run_id from pgflow.runs where run_id = any(%s) and status <> 'started'",
            (list(self.unfinished),)).fetchall()
        self.unfinished.difference_update(row[0] for row in rows)
