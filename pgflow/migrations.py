"""Ordered, recorded schema migrations from pgflow/sql/migrations/NNNN_name.sql.

All pending migrations apply in one transaction under an advisory lock, so
several processes may migrate at once: one applies, the others wait and then
find nothing to do. An applied migration whose file changed is an error, not
something to paper over.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from pgflow.errors import PgflowError

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


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s, %s)", _LOCK)
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
    return applied_now
