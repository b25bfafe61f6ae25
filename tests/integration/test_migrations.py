"""Schema migrations: ordered, recorded, idempotent, safe to run concurrently."""

from __future__ import annotations

import threading

import psycopg
import pytest

from pgflow import Client, PgflowError, db, migrations


def applied_versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "select version from pgflow.schema_migrations order by version")]


def test_migrate_twice_applies_once(empty_dsn):
    with Client(empty_dsn) as client:
        first = client.migrate()
        second = client.migrate()
    assert first == [f"{m.version:04d}_{m.name}" for m in migrations.available()]
    assert second == []
    assert applied_versions(empty_dsn) == [m.version for m in migrations.available()]


def test_newer_package_upgrades_an_older_schema(empty_dsn):
    oldest, *newer = migrations.available()
    assert newer, "this test needs at least two migrations"
    with db.connect(empty_dsn, "test") as conn:
        # What an older package would have left behind: only the first migration.
        conn.execute("create schema pgflow")
        conn.execute(oldest.sql.encode())
        conn.execute(
            "create table pgflow.schema_migrations (version integer primary key, name text "
            "not null, checksum text not null, applied_at timestamptz not null default now())"
        )
        conn.execute(
            "insert into pgflow.schema_migrations (version, name, checksum) values (%s, %s, %s)",
            (oldest.version, oldest.name, oldest.checksum),
        )
        applied = migrations.migrate(conn)
    assert applied == [f"{m.version:04d}_{m.name}" for m in newer]
    assert applied_versions(empty_dsn) == [m.version for m in migrations.available()]


def test_a_changed_applied_migration_is_an_error(empty_dsn):
    with db.connect(empty_dsn, "test") as conn:
        migrations.migrate(conn)
        conn.execute("update pgflow.schema_migrations set checksum = 'x' where version = 1")
        with pytest.raises(PgflowError, match="changed after it was applied"):
            migrations.migrate(conn)


def test_concurrent_migrations_do_not_collide(empty_dsn):
    results: list[object] = []

    def run() -> None:
        try:
            with Client(empty_dsn) as client:
                results.append(client.migrate())
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, list) for r in results), results
    assert sorted(len(r) for r in results) == [0, 0, 0, len(migrations.available())]
