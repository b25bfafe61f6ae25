"""Drive a supervisor.pgconn.PgConn from a test, without the supervisor's loop."""

from __future__ import annotations

import selectors
import time

from supervisor.pgconn import PgConn, Transaction


def drive(conn: PgConn, transactions: list[Transaction], timeout: float = 10.0) -> None:
    """Connect if needed, send the transactions and wait until every
    statement has its result."""
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    if not conn.ready:
        conn.start()
        while not conn.ready:
            assert time.monotonic() < deadline and conn.state.value != "broken", conn.error
            selector.register(conn.fileno(), conn.events())
            for _ in selector.select(deadline - time.monotonic()):
                conn.on_event(conn.events())
            selector.unregister(conn.fileno())
    conn.send(transactions)
    while not conn.idle:
        assert time.monotonic() < deadline and conn.ready, conn.error
        selector.register(conn.fileno(), conn.events())
        for _key, mask in selector.select(deadline - time.monotonic()):
            conn.on_event(mask)
        selector.unregister(conn.fileno())
    selector.close()
