"""Checks before a command uses the database, each failing with one line a
person can act on: which setting or URL (password masked), what to check,
and an exit code that tells systemd whether a restart can help.

- EXIT_CONFIG (78): a restart cannot help: a malformed URL, a wrong password
  or user, a database that does not exist, a missing or outdated schema.
  Authentication failures are here on purpose: a wrong password does not fix
  itself, and restarting every few seconds only fills the server's log.
- EXIT_RETRY (1): it may: Postgres is down, starting, unreachable or full.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgflow import db, migrations
from supervisor.redact import mask_password

EXIT_RETRY = 1
EXIT_CONFIG = 78

URL_SETTING = "PGFLOW_DATABASE_URL / --database-url"
LISTEN_URL_SETTING = "PGFLOW_LISTEN_URL / --listen-url"


class Problem(Exception):
    """A check failed: `str(problem)` is the line to print, `exit_code` the code to exit with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_CONFIG_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"password authentication failed|no password supplied|authentication failed",
                re.I), "check the user and password in the URL"),
    (re.compile(r'role "[^"]*" does not exist', re.I), "check the user name in the URL"),
    (re.compile(r'database "[^"]*" does not exist', re.I),
     "check the database name in the URL, or create that database"),
    (re.compile(r"pg_hba\.conf", re.I),
     "the server's pg_hba.conf does not let this user in from here; ask its administrator"),
    (re.compile(r"invalid (integer|connection option|sslmode|value)|invalid URI|missing \"=\"",
                re.I), "it is not a valid connection string; expected "
                       "postgresql://user:password@host:5432/dbname"),
    # PgBouncer's own refusals: the pooler answered, Postgres was never asked.
    (re.compile(r"unsupported startup parameter", re.I),
     "a connection pooler (PgBouncer) refused a session setting the URL sends at connection "
     "time (options=-c ... or a parameter libpq sends as a startup parameter); take it out of "
     "the URL, or list it in the pooler's ignore_startup_parameters. pgflow needs none: it "
     "sets its timeouts inside each transaction"),
    (re.compile(r"no such database|no such user", re.I),
     "the connection pooler (PgBouncer) has no such database or user: add it to the pooler's "
     "[databases] section or auth_file, or check the name in the URL"),
]

# Refusals a restart may outlive, with what to check.
_RETRY_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"pgbouncer cannot connect to server|server login has been failing", re.I),
     "the connection pooler (PgBouncer) answered but cannot reach Postgres; check the "
     "pooler's [databases] entry and that Postgres is running"),
    (re.compile(r"no more connections allowed", re.I),
     "the connection pooler (PgBouncer) is full (max_client_conn); raise it, or use fewer "
     "connections"),
]


def _reason(exc: BaseException) -> str:
    """The useful part of a libpq error, on one line."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^connection (failed|is bad):\s*", "", text)
    text = re.sub(r'connection to server (at|on) .*? failed:\s*', "", text)
    return text.replace("FATAL: ", "").strip() or type(exc).__name__


def explain(exc: BaseException, url: str, setting: str = URL_SETTING) -> Problem:
    """The Problem for an error raised while connecting to `url`."""
    where = f"{setting} = {mask_password(url)}"
    reason = _reason(exc)
    for pattern, advice in _CONFIG_PATTERNS:
        if pattern.search(reason):
            return Problem(f"cannot connect to the database ({where}): {reason}; {advice}",
                           EXIT_CONFIG)
    for pattern, advice in _RETRY_PATTERNS:
        if pattern.search(reason):
            return Problem(f"cannot connect to the database ({where}): {reason}; {advice} "
                           "(this may pass: retrying can help)", EXIT_RETRY)
    return Problem(f"cannot connect to the database ({where}): {reason}; check that Postgres "
                   "is running and that host and port are right (this may pass: retrying can help)",
                   EXIT_RETRY)


def check_url(url: str | None, setting: str = URL_SETTING) -> str:
    """The URL if it parses; else a Problem naming the setting."""
    if not url:
        raise Problem(f"no database given: set {setting}", EXIT_CONFIG)
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise Problem(f"{setting} = {mask_password(url)} is not a valid connection string "
                      f"({_reason(exc)}); expected postgresql://user:password@host:5432/dbname",
                      EXIT_CONFIG) from None
    return url


def connect(url: str | None, application_name: str, setting: str = URL_SETTING
            ) -> psycopg.Connection:
    """An autocommit connection, or a Problem that says what to check."""
    checked = check_url(url, setting)
    try:
        return db.connect(checked, application_name, connect_timeout=10)
    except psycopg.Error as exc:
        raise explain(exc, checked, setting) from None


def check_schema(conn: psycopg.Connection,
                 hint: str = "run `pgflow migrate` (or start the supervisor without --no-migrate)"
                 ) -> None:
    """A Problem (78) when the pgflow schema is missing or has pending migrations."""
    pending = migrations.pending(conn)
    if not pending:
        return
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
    if len(pending) == len(migrations.available()):
        state = "has no pgflow schema"
    else:
        state = f"has an outdated pgflow schema (pending: {names})"
    dbname = conn.info.dbname
    raise Problem(f"database {dbname!r} {state}: {hint}", EXIT_CONFIG)
