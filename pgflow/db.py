"""Connections and the translation of engine errors into pgflow exceptions."""

from __future__ import annotations

import contextlib
from typing import Literal

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import set_json_dumps, set_json_loads

from pgflow.errors import (
    FlowDefinitionError,
    FlowNotFoundError,
    InvalidInputError,
    PgflowError,
    RunNotFoundError,
    ShapeConflictError,
)

# SQLSTATE codes raised by pgflow/sql (see 0002_engine.sql).
_ENGINE_ERRORS: dict[str, type[PgflowError]] = {
    "PF001": FlowNotFoundError,
    "PF002": InvalidInputError,
    "PF003": ShapeConflictError,
    "PF004": RunNotFoundError,
    "PF005": FlowDefinitionError,
}


# libpq parameters every pgflow connection gets unless the URL sets them: a
# vanished server or network path is noticed within about half a minute
# (keepalives for an idle connection, tcp_user_timeout for unacknowledged
# writes) instead of the kernel's two hours, and a connect gives up after 10 s.
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def conninfo(dsn: str, application_name: str) -> str:
    """`dsn` with pgflow's connection defaults added where it sets nothing
    (its own values win, application_name included)."""
    given = conninfo_to_dict(dsn)
    extra = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
    if "application_name" not in given:
        extra["application_name"] = application_name
    return make_conninfo(dsn, **extra)


# What a connection string leads to: Postgres itself ("none"), or a pooler
# such as PgBouncer in that pool mode. Through a transaction pooler each
# transaction may run on another server session, so nothing may outlive a
# transaction: no prepared statements (psycopg prepares a statement run five
# times), no LISTEN, no session settings (pgflow never sends those, not even
# as startup parameters, which PgBouncer refuses). "session" behaves like
# "none": a session pooler keeps one server session per client session.
Pooler = Literal["none", "session", "transaction"]
POOLERS: tuple[Pooler, ...] = ("none", "session", "transaction")


def connect(dsn: str, application_name: str, *, pooler: Pooler = "none",
            **kwargs: object) -> psycopg.Connection:
    """An autocommit connection that reads and writes JSON with orjson, with
    pgflow's connection defaults (see CONNECTION_DEFAULTS); through a
    transaction pooler, one that never prepares statements."""
    if pooler == "transaction":
        kwargs.setdefault("prepare_threshold", None)
    conn = psycopg.connect(conninfo(dsn, application_name), autocommit=True,
                           **kwargs)  # type: ignore[arg-type]
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)
    if pooler == "transaction":
        # A server session another client LISTENed on through the pooler
        # delivers its notifications to whoever it serves next; psycopg would
        # keep every one of them (it queues notifications nobody handles).
        conn.add_notify_handler(_ignore_notification)
    return conn


def _ignore_notification(notify: psycopg.Notify) -> None:
    pass


def engine_error(exc: psycopg.Error) -> PgflowError | None:
    """The pgflow exception for an error the engine raised on purpose, else None."""
    kind = _ENGINE_ERRORS.get(exc.sqlstate or "")
    if kind is None:
        return None
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if diag.message_hint:
        message = f"{message}. {diag.message_hint}"
    return kind(message)


# SQLSTATEs a transaction pooler causes when a client keeps prepared
# statements across transactions: another client's statement of the same name
# already exists in the server session it got, or its own is in another one.
_PREPARED_STATEMENT_ERRORS = {"26000", "42P05"}


def pooler_error(exc: psycopg.Error) -> PgflowError | None:
    """A PgflowError saying what went wrong, for an error that means the
    connection goes through a transaction pooler that pgflow was not told
    about (psycopg's prepared statements "_pg3_N" do not survive it); else None."""
    if exc.sqlstate not in _PREPARED_STATEMENT_ERRORS or "_pg3_" not in str(exc):
        return None
    return PgflowError(
        f"{str(exc).strip()}: the connection seems to go through a transaction "
        "pooler (PgBouncer with pool_mode = transaction), where a prepared statement does "
        "not outlive its transaction. Tell pgflow so: Client(..., pooler=\"transaction\"), "
        "or PGFLOW_POOLER=transaction for the pgflow command")


def is_live(conn: psycopg.Connection | None) -> bool:
    """Open and not broken (a lost server makes a connection broken, not closed)."""
    return conn is not None and not conn.closed and not conn.broken


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may already be dead."""
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
