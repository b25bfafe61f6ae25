"""Ordered, recorded schema migrations from pgflow/sql/migrations/NNNN_name.sql,
then least privilege (pgflow/sql/permissions.sql) on every migrate.

All pending migrations apply in one transaction under an advisory lock, so
several processes may migrate at once: one applies, the others wait and then
find nothing to do. An applied migration whose file changed is an error, not
something to paper over.

Only the schema's owner (or a role that may create it) changes anything. A
role without that right (a supervisor running as pgflow_worker with
PGFLOW_MIGRATE=true) finds nothing to do when the schema is up to date, and
a clear error when it is not. `roles=True` also creates the roles of
pgflow/sql/roles.sql (it needs CREATEROLE).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from pgflow.errors import PermissionDeniedError, PgflowError

# pg_advisory_xact_lock(classid, objid): "pgflow" / "migrate"
_LOCK = (0x70676677, 1)
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped with this package, in order."""
    found = []
    for entry in resources.files("pgflow").joinpath("sql", "migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def pending(conn: psycopg.Connection) -> list[Migration]:
    """The shipped migrations not yet applied to this database (all of them
    when it has no pgflow schema), without changing anything."""
    row = conn.execute("select to_regclass('pgflow.schema_migrations')").fetchone()
    if row is None or row[0] is None:
        return available()
    applied = {version for (version,) in conn.execute(
        "select version from pgflow.schema_migrations")}
    return [m for m in available() if m.version not in applied]


ROLES = ("pgflow_app", "pgflow_worker")


def _sql(name: str) -> bytes:
    return resources.files("pgflow").joinpath("sql", f"{name}.sql").read_bytes()


def may_change_schema(conn: psycopg.Connection) -> bool:
    """Whether the current role owns schema pgflow (or may create it, when absent)."""
    row = conn.execute(
        "select coalesce((select pg_has_role(current_user, nspowner, 'USAGE') "
        "                 from pg_namespace where nspname = 'pgflow'), "
        "                has_database_privilege(current_database(), 'CREATE'))"
    ).fetchone()
    return bool(row and row[0])


def missing_roles(conn: psycopg.Connection) -> list[str]:
    """The roles of roles.sql that this cluster does not have yet."""
    present = {name for (name,) in conn.execute(
        "select rolname from pg_roles where rolname = any (%s)", (list(ROLES),))}
    return [role for role in ROLES if role not in present]


def migrate(conn: psycopg.Connection, *, roles: bool = False) -> list[str]:
    """Apply pending migrations, then permissions.sql; return the names
    applied (empty when up to date). With roles=True, create the roles of
    roles.sql first when they are missing."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s, %s)", _LOCK)
        if not may_change_schema(conn):
            _refuse_unless_current(conn, roles)
            return []
        conn.execute("create schema if not exists pgflow")
        conn.execute(
            """
            create table if not exists pgflow.schema_migrations (
                version    integer primary key,
                name       text not null,
                checksum   text not null,
                applied_at timestamptz not null default now()
            )
            """
        )
        rows = conn.execute("select version, name, checksum from pgflow.schema_migrations")
        recorded = {version: (name, checksum) for version, name, checksum in rows}
        for migration in available():
            if migration.version in recorded:
                name, checksum = recorded[migration.version]
                if checksum != migration.checksum:
                    raise PgflowError(
                        f"Migration {migration.version:04d}_{name} changed after it was applied "
                        "to this database; ship schema changes as a new migration file"
                    )
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "insert into pgflow.schema_migrations (version, name, checksum) "
                "values (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
        if roles and missing_roles(conn):
            conn.execute(_sql("roles"))
        conn.execute(_sql("permissions"))
    return applied_now


def _refuse_unless_current(conn: psycopg.Connection, roles: bool) -> None:
    """For a role that may not change the schema: nothing to do when it is
    current, else a PgflowError saying who can do it."""
    waiting = pending(conn)
    if not waiting and not (roles and missing_roles(conn)):
        return
    owner = conn.execute("select coalesce((select nspowner::regrole::text from pg_namespace "
                         "where nspname = 'pgflow'), 'a role that may create it')").fetchone()
    who = conn.execute("select current_user").fetchone()
    assert owner is not None and who is not None
    what = (f"apply migrations ({', '.join(f'{m.version:04d}_{m.name}' for m in waiting)})"
            if waiting else f"create the roles {', '.join(missing_roles(conn))}")
    raise PermissionDeniedError(
        f"role {who[0]!r} cannot {what} in database {conn.info.dbname!r}: it does not own "
        f"schema pgflow. Run `pgflow migrate{' --roles' if roles else ''}` as {owner[0]} (the "
        "owner), then start this process again")
