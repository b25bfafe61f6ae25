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

Notifications need a real server session: through a transaction pooler a
LISTEN stays behind in whichever server session ran it, and what it hears
goes nowhere. So the second connection may not listen at all (`listens`
False: the database URL goes through a transaction pooler and no listen URL
was given; it then only runs maintenance statements), and after each LISTEN
the working connection sends a probe notification that must come back within
PROBE_TIMEOUT. When notifications cannot arrive, `poll_interval` is the
short one, and the log says why, once.
"""

from __future__ import annotations

import logging
import selectors
import time
import uuid
from collections.abc import Callable, Sequence

from supervisor.backoff import Backoff
from supervisor.metrics import Metrics
from supervisor.pgconn import ConnectionLost, PgConn, State, Statement, Transaction
from supervisor.rounds import LOCK_TIMEOUT, STATEMENT_TIMEOUT

log = logging.getLogger("pgflow.supervisor")

TASKS_CHANNEL = "pgflow_tasks"
CANCEL_CHANNEL = "pgflow_cancel"
# A connection attempt that has not finished by then is given up and retried.
CONNECT_TIMEOUT = 10.0
# A probe notification that has not come back by then is taken as proof that
# notifications cannot arrive on the listening connection.
PROBE_TIMEOUT = 5.0
# Probe payloads cannot be flow slugs (those match ^[a-zA-Z_][a-zA-Z0-9_]*$),
# so other supervisors, of any version, ignore them.
PROBE_PREFIX = "probe:"


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
        listens: bool = True,
        poll_interval: float = 10.0,
        poll_interval_without_notifications: float = 0.5,
        prepare: bool = True,
    ) -> None:
        # prepare=False through a transaction pooler: a prepared statement
        # lives in one server session, and the next transaction may get another.
        self.work = PgConn(conninfo, pipeline=True, prepare=prepare)
        self.listen = PgConn(listen_conninfo, pipeline=False)
        # False: notifications cannot arrive (a transaction pooler, no listen URL).
        self.listens = listens
        self._selector = selector
        self._metrics = metrics
        self._on_up = on_up
        self._on_tasks = on_tasks
        self._on_cancel = on_cancel
        self._poll_interval = poll_interval
        self._poll_interval_without_notifications = poll_interval_without_notifications
        self._fds: dict[PgConn, int] = {}
        self._backoff = Backoff(0.2, 10.0)
        self.up = False
        self.listening = False
        self._attempting = False  # a connection attempt is under way
        self._round_sent_at: float | None = None
        self.next_connect = 0.0
        self._connect_deadline = 0.0
        self.last_error = ""
        # True once a probe came back, False when one did not (or there is
        # no listener), None before the first probe's verdict.
        self.notifications_arrive: bool | None = None if listens else False
        self._probe_payload = ""
        self._probe_due = False
        self._probe_deadline: float | None = None
        self._said_deaf = False

    # -- state -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Up, with no round in flight: the next may be sent."""
        return self.up and self.work.idle

    @property
    def ready(self) -> bool:
        return self.up and (self.listening or not self.listens)

    @property
    def poll_interval(self) -> float:
        """Seconds between fallback polls: short when notifications cannot arrive."""
        if self.notifications_arrive is False:
            return self._poll_interval_without_notifications
        return self._poll_interval

    def next_wakeup(self) -> float | None:
        if self.up:
            return self._probe_deadline
        return self._connect_deadline if self._attempting else self.next_connect

    # -- connecting ----------------------------------------------------------------

    def service(self, now: float) -> None:
        """Start a connection attempt when one is due; give up a stuck one;
        send the probe notification, and judge it when its time is up."""
        if self.up:
            self._service_probe(now)
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
        if self.listens:
            self.listen.send_simple(f"listen {TASKS_CHANNEL}; listen {CANCEL_CHANNEL}",
                                    self._on_listening)
        elif not self._said_deaf:
            self._said_deaf = True
            log.info("not listening for notifications: the database URL goes through a "
                     "transaction pooler (--pooler transaction) and no --listen-url is set; "
                     "polling for tasks every %gs (--poll-interval-without-notifications). "
                     "Set --listen-url to Postgres itself or to a session pooler to be woken "
                     "at once.", self._poll_interval_without_notifications)
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
            self._probe_due = True

    def lost(self, reason: str) -> None:
        """Drop both connections and schedule the next attempt."""
        if self.up or not self._backoff.failures:
            log.warning("database connection lost: %s", reason or "unknown reason")
        self.last_error = reason
        self.up = self.listening = self._attempting = False
        self._round_sent_at = None
        self._probe_due = False
        self._probe_deadline = None
        self.work.close()
        self.listen.close()
        self._watch()
        self._metrics.set_database_connected(False)
        self.next_connect = time.monotonic() + self._backoff.next_delay()

    # -- the probe -----------------------------------------------------------------

    def _service_probe(self, now: float) -> None:
        if self._probe_due and self.work.idle:
            self._probe_due = False
            self._probe_payload = f"{PROBE_PREFIX}{uuid.uuid4()}"
            notify = Statement(b"select pg_notify($1, $2)", (TASKS_CHANNEL, self._probe_payload),
                               self._on_probe_sent)
            self.work.send([Transaction([notify], {"lock_timeout": LOCK_TIMEOUT,
                                                   "statement_timeout": STATEMENT_TIMEOUT})])
            self._after_io()
        elif self._probe_deadline is not None and now >= self._probe_deadline:
            self._probe_deadline = None
            self._probe_lost()

    def _on_probe_sent(self, result: object) -> None:
        if isinstance(result, ConnectionLost):
            return  # probed again after the reconnect
        if isinstance(result, Exception):
            log.warning("could not send the notification that checks the listening "
                        "connection (%s); trying again after the next reconnect", result)
            return
        self._probe_deadline = time.monotonic() + PROBE_TIMEOUT

    def _probe_arrived(self) -> None:
        self._probe_deadline = None
        if self.notifications_arrive is False:
            log.info("notifications arrive again on the listening connection; fallback "
                     "polls every %gs again", self._poll_interval)
        self.notifications_arrive = True

    def _probe_lost(self) -> None:
        was = self.notifications_arrive
        self.notifications_arrive = False
        if was is False or self._said_deaf:
            return
        self._said_deaf = True
        log.warning("a notification sent on the database connection did not arrive on the "
                    "listening connection within %gs: the listen URL (--listen-url, default "
                    "the database URL) seems to go through a transaction pooler, where LISTEN "
                    "cannot work. Polling for tasks every %gs instead "
                    "(--poll-interval-without-notifications). Point --listen-url at Postgres "
                    "itself or at a session pooler, and say --pooler transaction.",
                    PROBE_TIMEOUT, self._poll_interval_without_notifications)

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
        probes = {payload for payload in flows if payload.startswith(PROBE_PREFIX)}
        if probes:
            flows -= probes
            if self._probe_payload in probes:
                self._probe_arrived()
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
