"""Database helpers shared by both sides of bench/vs_pgqueuer.py: scratch
databases, finding a side's backends, dead tuples, the server's settings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo


@contextlib.contextmanager
def scratch_database(admin_url: str, name: str) -> Iterator[str]:
    """Create database `name`, yield its conninfo, drop it (even on Ctrl-C)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        conninfo = make_conninfo(admin_url, dbname=name)
        with psycopg.connect(conninfo, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
            conn.execute("create extension pgstattuple")  # exact dead tuples; contrib, optional
        yield conninfo
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def one(conn: psycopg.Connection, query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None) -> tuple[Any, ...]:
    """The single row a query returns (aggregates, `show`, `exists`)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row


def tagged(conninfo: str, application_name: str) -> str:
    """The same connection string with an application_name, by which the
    benchmark finds that side's backends in pg_stat_activity."""
    return make_conninfo(conninfo, application_name=application_name)


def backend_pids(conn: psycopg.Connection, application_name: str) -> list[int]:
    rows = conn.execute(
        "select pid from pg_stat_activity where application_name = %s and datname = current_database()",
        (application_name,),
    ).fetchall()
    return [int(row[0]) for row in rows]


def dead_tuples(conn: psycopg.Connection, tables: list[str]) -> dict[str, dict[str, int]]:
    """Live and dead tuples per table: counted by pgstattuple when the scratch
    database has it, else as the statistics system last heard (which lags)."""
    has_pgstattuple = one(conn, "select exists (select from pg_extension where extname = 'pgstattuple')")[0]
    query = ("select tuple_count, dead_tuple_count, 'pgstattuple' from pgstattuple(%s::regclass)"
             if has_pgstattuple else
             "select n_live_tup, n_dead_tup, 'pg_stat_user_tables' from pg_stat_user_tables "
             "where relid = %s::regclass")
    counts = {}
    for table in tables:
        live, dead, source = one(conn, query, (table,))
        counts[table] = {"live": int(live), "dead": int(dead), "source": source}
    return counts


def server_info(conn: psycopg.Connection) -> dict[str, object]:
    settings = ("server_version", "autovacuum", "shared_buffers", "synchronous_commit", "fsync",
                "max_connections", "shared_preload_libraries", "wal_level")
    info: dict[str, object] = {
        name: one(conn, f"show {name}")[0] for name in settings
    }
    info["pg_stat_statements"] = "pg_stat_statements" in str(info["shared_preload_libraries"])
    return info
