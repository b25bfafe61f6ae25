"""The LISTEN connection: wakes the loop when tasks of our flows may be ready.

Notifications are hints, never work items: the loop claims with SQL. The
connection does nothing but listen, so reading it never blocks the loop.
"""

from __future__ import annotations

import psycopg

from pgflow import db

TASKS_CHANNEL = "pgflow_tasks"


class Listener:
    def __init__(self, dsn: str, flows: set[str], application_name: str) -> None:
        self._dsn = dsn
        self._flows = flows
        self._application_name = application_name
        self.conn: psycopg.Connection | None = None

    @property
    def connected(self) -> bool:
        return db.is_live(self.conn)

    def connect(self) -> None:
        """Open the connection and LISTEN (raises psycopg.OperationalError)."""
        self.close()
        conn = db.connect(self._dsn, self._application_name, connect_timeout=5)
        conn.execute(f"listen {TASKS_CHANNEL}")
        self.conn = conn

    def fileno(self) -> int:
        assert self.conn is not None
        return self.conn.pgconn.socket

    def drain(self) -> int:
        """Read what arrived; return how many notifications concern our flows.
        Raises psycopg.OperationalError when the connection is gone."""
        assert self.conn is not None
        pgconn = self.conn.pgconn
        pgconn.consume_input()
        relevant = 0
        while (notify := pgconn.notifies()) is not None:
            if notify.extra.decode() in self._flows:
                relevant += 1
        return relevant

    def close(self) -> None:
        db.close_quietly(self.conn)
        self.conn = None
