"""A libpq connection the supervisor's loop drives without ever blocking on it.

`PgConn` connects with libpq's asynchronous connect, then either runs
statements in pipeline mode (the working connection: many statements, one
round trip, grouped in transactions) or sits in LISTEN (the listening
connection). The loop registers `fileno()` with its selector for `events()`
and calls `on_event()`; results are handed to each statement's callback as
they arrive. Values are read as text (bytes), so JSON columns pass through
untouched.

A lost connection (the server went away, the network broke) fails every
statement still waiting, with `ConnectionLost`, and sets `broken`. An error a
statement raised is that statement's result (`StatementError`), and aborts
the rest of its transaction only.

With `prepare` (the default; not through a transaction pooler, where the next
transaction may meet another server session), each statement text is
prepared once per connection and then only bound and executed: the parse and
plan of the claim statement cost more than running it (measured 0.35 ms of
0.68 per claim).
"""

from __future__ import annotations

import collections
import logging
import selectors
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import psycopg
from psycopg import pq

log = logging.getLogger("pgflow.supervisor.db")

Param = str | bytes | None


class ConnectionLost(Exception):
    """The connection to Postgres is gone."""


@dataclass(frozen=True)
class StatementError(Exception):
    """A statement failed (or was skipped because an earlier one of its
    transaction failed: sqlstate None, aborted True)."""

    sqlstate: str | None
    message: str
    aborted: bool = False

    def __str__(self) -> str:
        return self.message


@dataclass
class Rows:
    """A statement's result: column names and rows of text values (bytes)."""

    names: tuple[str, ...]
    values: list[tuple[bytes | None, ...]]

    def column(self, name: str) -> int:
        return self.names.index(name)

    def dicts(self) -> list[dict[str, bytes | None]]:
        return [dict(zip(self.names, row, strict=True)) for row in self.values]


Callback = Callable[[Rows | StatementError | ConnectionLost], None]


@dataclass
class Statement:
    sql: bytes
    params: Sequence[Param]
    on_result: Callback


@dataclass
class Transaction:
    """Statements that commit together: the implicit transaction libpq's
    pipeline mode runs between two sync points (an error rolls back what ran
    and skips the rest, up to the sync; the next transaction is unaffected).
    `settings` are applied with set_config(..., is_local) at its start, never
    as session state, so the connection may go through a transaction pooler."""

    statements: list[Statement]
    settings: dict[str, str] = field(default_factory=dict)


class State(Enum):
    CONNECTING = "connecting"
    READY = "ready"
    BROKEN = "broken"


# After these, a prepared statement is prepared again (under a new name): it
# is gone (26000), or a migration changed what it returns (0A000, "cached
# plan must not change result type").
REPREPARE_SQLSTATES = frozenset({"26000", "0A000"})


def _text(value: Param) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class PgConn:
    def __init__(self, conninfo: str, *, pipeline: bool, prepare: bool = True) -> None:
        self._conninfo = conninfo
        self._pipeline = pipeline
        self._prepare = prepare and pipeline
        # Statement text -> the name it is prepared under on this connection.
        self._prepared: dict[bytes, bytes] = {}
        self._names = 0
        self.state = State.BROKEN
        self.error = "not connected"
        self._pgconn: pq.abc.PGconn | None = None
        self._polling = pq.PollingStatus.WRITING
        # Statements sent, in order, whose results have not all arrived; None
        # marks a sync point.
        self._waiting: collections.deque[Statement | None] = collections.deque()
        self._current: Rows | StatementError | None = None
        self._write_pending = False
        self.notifies: list[tuple[str, str]] = []

    # -- connecting ----------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (never blocks on the server; name lookup may)."""
        self.close()
        pgconn = pq.PGconn.connect_start(self._conninfo.encode())
        if pgconn.status == pq.ConnStatus.BAD:
            self.error = _message(pgconn.get_error_message()) or "cannot connect"
            pgconn.finish()
            raise ConnectionLost(self.error)
        self._pgconn = pgconn
        self._polling = pq.PollingStatus.WRITING
        self.state = State.CONNECTING

    def _advance_connect(self) -> None:
        assert self._pgconn is not None
        self._polling = pq.PollingStatus(self._pgconn.connect_poll())
        if self._polling == pq.PollingStatus.FAILED:
            self._lose(_message(self._pgconn.get_error_message()) or "connection failed")
        elif self._polling == pq.PollingStatus.OK:
            self._pgconn.notice_handler = _log_notice
            self._pgconn.nonblocking = 1
            if self._pipeline:
                self._pgconn.enter_pipeline_mode()
            self.state = State.READY

    # -- the selector's view --------------------------------------------------

    def fileno(self) -> int:
        return self._pgconn.socket if self._pgconn is not None else -1

    def events(self) -> int:
        if self.state == State.CONNECTING:
            return (selectors.EVENT_WRITE if self._polling == pq.PollingStatus.WRITING
                    else selectors.EVENT_READ)
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if self._write_pending else 0)

    def on_event(self, mask: int) -> None:
        if self.state == State.CONNECTING:
            self._advance_connect()
            return
        if self.state != State.READY:
            return
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush()
            if mask & selectors.EVENT_READ:
                self._read()
        except psycopg.OperationalError as exc:
            self._lose(str(exc))

    # -- sending ---------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Connected, with nothing sent still waiting for its results."""
        return self.state == State.READY and not self._waiting

    @property
    def ready(self) -> bool:
        return self.state == State.READY

    def send(self, transactions: Sequence[Transaction]) -> None:
        """Queue transactions (pipeline mode); results arrive through callbacks."""
        if self.state != State.READY:
            raise ConnectionLost(self.error)
        assert self._pgconn is not None and self._pipeline
        try:
            batches = [([_settings_statement(tx.settings)] if tx.settings else []) + tx.statements
                       for tx in transactions]
            if self._prepare:
                self._prepare_new(batches)
            for statements in batches:
                for statement in statements:
                    self._queue(statement)
                self._pgconn.pipeline_sync()
                self._waiting.append(None)
            self._flush()
        except psycopg.OperationalError as exc:
            self._lose(str(exc))

    def send_simple(self, sql: str, on_result: Callback) -> None:
        """One statement outside pipeline mode (LISTEN, VACUUM)."""
        if self.state != State.READY:
            raise ConnectionLost(self.error)
        assert self._pgconn is not None and not self._pipeline
        try:
            self._pgconn.send_query(sql.encode())
            self._waiting.append(Statement(sql.encode(), (), on_result))
            self._flush()
        except psycopg.OperationalError as exc:
            self._lose(str(exc))

    def _prepare_new(self, batches: list[list[Statement]]) -> None:
        """Prepare the statement texts this connection has not seen, in a
        segment of their own: a transaction that fails cannot skip them."""
        assert self._pgconn is not None
        new = False
        for statements in batches:
            for statement in statements:
                if statement.sql in self._prepared:
                    continue
                self._names += 1
                name = b"pgflow_%d" % self._names
                self._prepared[statement.sql] = name
                self._pgconn.send_prepare(name, statement.sql)
                self._waiting.append(Statement(statement.sql, (), self._prepared_callback(
                    statement.sql, name)))
                new = True
        if new:
            self._pgconn.pipeline_sync()
            self._waiting.append(None)

    def _prepared_callback(self, sql: bytes, name: bytes) -> Callback:
        def prepared(result: Rows | StatementError | ConnectionLost) -> None:
            if isinstance(result, StatementError):
                # The statements sent under this name fail with 26000; they
                # report this error to whoever sent them, and the next use
                # prepares the text again.
                log.warning("could not prepare a statement: %s", result)
                if self._prepared.get(sql) == name:
                    del self._prepared[sql]
        return prepared

    def _queue(self, statement: Statement) -> None:
        assert self._pgconn is not None
        params = [_text(p) for p in statement.params]
        name = self._prepared.get(statement.sql) if self._prepare else None
        if name is None:
            self._pgconn.send_query_params(statement.sql, params)
        else:
            self._pgconn.send_query_prepared(name, params)
        self._waiting.append(statement)

    def _flush(self) -> None:
        assert self._pgconn is not None
        self._write_pending = self._pgconn.flush() == 1

    # -- receiving -------------------------------------------------------------

    def _read(self) -> None:
        pgconn = self._pgconn
        assert pgconn is not None
        pgconn.consume_input()
        while (notify := pgconn.notifies()) is not None:
            # Only the listening connection keeps them. Through a transaction
            # pooler the working connection may be served by a session that
            # someone else LISTENed on, and would otherwise pile up theirs.
            if not self._pipeline:
                self.notifies.append((notify.relname.decode(), notify.extra.decode()))
        while self._waiting and not pgconn.is_busy():
            result = pgconn.get_result()
            head = self._waiting[0]
            if head is None:  # a sync point: its marker result ends a transaction
                if result is None:
                    break
                if result.status == pq.ExecStatus.PIPELINE_SYNC:
                    self._waiting.popleft()
                continue
            if result is None:  # the end of the head statement's results
                self._waiting.popleft()
                outcome, self._current = self._current, None
                if isinstance(outcome, StatementError) and outcome.sqlstate in REPREPARE_SQLSTATES:
                    self._prepared.pop(head.sql, None)
                head.on_result(outcome if outcome is not None else Rows((), []))
                continue
            self._current = _outcome(result)
        if pgconn.status == pq.ConnStatus.BAD:
            self._lose(_message(pgconn.get_error_message()) or "connection lost")

    # -- losing it -------------------------------------------------------------

    def _lose(self, message: str) -> None:
        self.error = message.strip() or "connection lost"
        self.close(self.error)

    def close(self, reason: str = "connection closed") -> None:
        """Close the connection; every statement still waiting for its results
        gets ConnectionLost. (Left waiting, they would outlive the connection:
        the next one would never look idle, or would hand them its own results.)"""
        waiting, self._waiting = self._waiting, collections.deque()
        self._prepared.clear()  # prepared statements live and die with their session
        if self._pgconn is not None:
            self._pgconn.finish()
            self._pgconn = None
        self.state = State.BROKEN
        self._write_pending = False
        self._current = None
        for statement in waiting:
            if statement is not None:
                statement.on_result(ConnectionLost(reason))

    def __repr__(self) -> str:
        return f"<PgConn {self.state.value} waiting={len(self._waiting)}>"


def _settings_statement(settings: dict[str, str]) -> Statement:
    """set_config(name, value, is_local) for each setting, as one statement."""
    names = list(settings)
    sql = "select " + ", ".join(
        f"set_config(${2 * i + 1}, ${2 * i + 2}, true)" for i in range(len(names)))
    params = [p for name in names for p in (name, settings[name])]
    return Statement(sql.encode(), params, lambda result: None)


def _log_notice(result: Any) -> None:
    """Server notices (a WARNING from VACUUM, say) go to the log, not to stderr."""
    log.info("postgres: %s", _message(result.error_message))


def _message(raw: bytes | str) -> str:
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).strip()


def _outcome(result: Any) -> Rows | StatementError:
    status = result.status
    if status == pq.ExecStatus.TUPLES_OK:
        nfields, ntuples = result.nfields, result.ntuples
        names = tuple(result.fname(j).decode() for j in range(nfields))
        get = result.get_value
        return Rows(names, [tuple(get(i, j) for j in range(nfields)) for i in range(ntuples)])
    if status == pq.ExecStatus.COMMAND_OK:
        return Rows((), [])
    if status == pq.ExecStatus.PIPELINE_ABORTED:
        return StatementError(None, "skipped: an earlier statement of its transaction failed",
                              aborted=True)
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    return StatementError(sqlstate.decode() if sqlstate else None,
                          _message(result.error_message) or f"unexpected result {status.name}")
