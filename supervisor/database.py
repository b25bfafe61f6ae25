"""The supervisor's two connections as one thing that is up or down.

- The working connection runs the engine's statements in pipeline mode:
  one round of transactions in flight at a time (`idle` says when the next
  may go).
- The listening connection LISTENs to `pgflow_tasks` (a flow slug per
  notification: tasks may be claimable) and `pgflow_cancel` (run ids whose
  running tasks should stop). Notifications are hints: the loop claims with
  SQL, and polls once after every reconnect, since NOTIFY is not durable.

Both connect without blocking the loop, are lost together, and come back
together with exponential backoff. While they are down nothing else stops:
executors run, answers are kept, the watchdog is fed.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable, Sequence

from supervisor.backoff import Backoff
from supervisor.metrics import Metrics
from supervisor.pgconn import ConnectionLost, PgConn, State, Transaction

log = logging.getLogger("pgflow.supervisor")

TASKS_CHANNEL = "pgflow_tasks"
CANCEL_CHANNEL = "pgflow_cancel"
# A connection attempt that has not finished by then is given up and retried.
CONNECT_TIMEOUT = 10.0


class Database:
    def __init__(
        self,
        conninfo: str,
        listen_conninfo: str,
        selector: selectors.BaseSelector,
        metrics: Metrics,
        *,
        on_up: Callable[[], None],
        on_tasks: Callable[[set[str]], None],
        on_cancel: Callable[[set[str]], None],
    ) -> None:
        self.work = PgConn(conninfo, pipeline=True)
        self.listen = PgConn(listen_conninfo, pipeline=False)
        self._selector = selector
        self._metrics = metrics
        self._on_up = on_up
        self._on_tasks = on_tasks
        self._on_cancel = on_cancel
        self._fds: dict[PgConn, int] = {}
        self._backoff = Backoff(0.2, 10.0)
        self.up = False
        self.listening = False
        self._attempting = False  # a connection attempt is under way
        self._round_sent_at: float | None = None
        self.next_connect = 0.0
        self._connect_deadline = 0.0
        self.last_error = ""

    # -- state -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Up, with no round in flight: the next may be sent."""
        return self.up and self.work.idle

    @property
    def ready(self) -> bool:
        return self.up and self.listening

    def next_wakeup(self) -> float | None:
        if self.up:
            return None
        return self._connect_deadline if self._attempting else self.next_connect

    # -- connecting ----------------------------------------------------------------

    def service(self, now: float) -> None:
        """Start a connection attempt when one is due; give up a stuck one."""
        if self.up:
            return
        if self._attempting:
            if now >= self._connect_deadline:
                self.lost(f"no connection after {CONNECT_TIMEOUT:g}s")
            return
        if now < self.next_connect:
            return
        try:
            self.work.start()
            self.listen.start()
        except ConnectionLost as exc:
            self.lost(str(exc))
            return
        self._attempting = True
        self._connect_deadline = now + CONNECT_TIMEOUT
        self._watch()

    def _on_connected(self) -> None:
        """Both connections finished connecting: listen, then say we are up."""
        self.listen.send_simple(f"listen {TASKS_CHANNEL}; listen {CANCEL_CHANNEL}",
                                self._on_listening)
        if self.next_connect or self._backoff.failures:
            log.info("database connection restored")
        self._attempting = False
        self.up = True
        self._backoff.reset()
        self.next_connect = 0.0
        self._metrics.set_database_connected(True)
        self._on_up()

    def _on_listening(self, result: object) -> None:
        if isinstance(result, Exception):
            self.lost(f"LISTEN failed: {result}")
        else:
            self.listening = True

    def lost(self, reason: str) -> None:
        """Drop both connections and schedule the next attempt."""
        if self.up or not self._backoff.failures:
            log.warning("database connection lost: %s", reason or "unknown reason")
        self.last_error = reason
        self.up = self.listening = self._attempting = False
        self._round_sent_at = None
        self.work.close()
        self.listen.close()
        self._watch()
        self._metrics.set_database_connected(False)
        self.next_connect = time.monotonic() + self._backoff.next_delay()

    # -- rounds --------------------------------------------------------------------

    def send(self, transactions: Sequence[Transaction]) -> None:
        """Send a round (call only when `idle`)."""
        self._round_sent_at = time.perf_counter()
        try:
            self.work.send(transactions)
        except ConnectionLost as exc:
            self.lost(str(exc))
        self._after_io()

    def send_maintenance(self, sql: str, on_result: Callable[[object], None]) -> None:
        """A statement that cannot run in a pipeline (VACUUM), on the listening
        connection, which is otherwise idle."""
        if self.ready:
            self.listen.send_simple(sql, on_result)
            self._watch()

    # -- events --------------------------------------------------------------------

    def _callback(self, conn: PgConn) -> Callable[[int], None]:
        def on_event(mask: int) -> None:
            conn.on_event(mask)
            self._after_io()

        return on_event

    def _after_io(self) -> None:
        if self._attempting:
            if self.work.ready and self.listen.ready:
                self._on_connected()
            elif State.BROKEN in (self.work.state, self.listen.state):
                self.lost(self.work.error if self.work.state == State.BROKEN else self.listen.error)
                return
        elif self.up and not (self.work.ready and self.listen.ready):
            self.lost((self.work if not self.work.ready else self.listen).error)
            return
        if self._round_sent_at is not None and self.work.idle:
            self._metrics.db_roundtrip("round", time.perf_counter() - self._round_sent_at)
            self._round_sent_at = None
        self._deliver_notifications()
        self._watch()

    def _deliver_notifications(self) -> None:
        if not self.listen.notifies:
            return
        flows = {payload for channel, payload in self.listen.notifies if channel == TASKS_CHANNEL}
        cancelled = {run_id for channel, payload in self.listen.notifies
                     if channel == CANCEL_CHANNEL for run_id in payload.split(",") if run_id}
        self.listen.notifies.clear()
        if flows:
            self._on_tasks(flows)
        if cancelled:
            self._on_cancel(cancelled)

    def _watch(self) -> None:
        """Keep the selector's registrations in step with both connections."""
        registered = self._selector.get_map()
        for conn in (self.work, self.listen):
            old, new = self._fds.get(conn, -1), conn.fileno()
            if old >= 0 and (old != new or new < 0) and old in registered:
                self._selector.unregister(old)
            if new < 0:
                self._fds.pop(conn, None)
                continue
            events = conn.events()
            key = registered.get(new)
            if key is None:
                self._selector.register(new, events, self._callback(conn))
            elif key.events != events:
                self._selector.modify(new, events, key.data)
            self._fds[conn] = new

    def close(self) -> None:
        self.up = self.listening = self._attempting = False
        self.work.close()
        self.listen.close()
        self._watch()
