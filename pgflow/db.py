"""Connections and the translation of engine errors into pgflow exceptions."""

from __future__ import annotations

import contextlib

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


def connect(dsn: str, application_name: str, **kwargs: object) -> psycopg.Connection:
    """An autocommit connection that reads and writes JSON with orjson, with
    pgflow's connection defaults (see CONNECTION_DEFAULTS)."""
    conn = psycopg.connect(conninfo(dsn, application_name), autocommit=True,
                           **kwargs)  # type: ignore[arg-type]
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)
    return conn


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


def is_live(conn: psycopg.Connection | None) -> bool:
    """Open and not broken (a lost server makes a connection broken, not closed)."""
    return conn is not None and not conn.closed and not conn.broken


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may already be dead."""
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
