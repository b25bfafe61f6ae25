"""The supervisor's working connection prepares each statement text once and
prepares it again when the server forgets it or a migration changes what it
returns; through a transaction pooler it prepares nothing."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from supervisor.pgconn import PgConn, Rows, Statement, StatementError, Transaction
from tests.pgconn_driver import drive

SELECT = b"select * from prepared_probe where id = $1"


@pytest.fixture
def probe_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("create table prepared_probe (id int primary key, a text)")
        setup.execute("insert into prepared_probe values (1, 'one')")


@pytest.fixture
def conn(dsn: str, probe_table: None) -> Iterator[PgConn]:
    """A pipelined working connection that prepares its statements."""
    connection = PgConn(dsn, pipeline=True)
    yield connection
    connection.close()


def _select(conn: PgConn, *extra: Statement) -> list[Rows | StatementError]:
    results: list[Rows | StatementError] = []
    drive(conn, [Transaction([Statement(SELECT, ("1",), results.append), *extra])])
    return results


def _prepared(conn: PgConn) -> list[tuple[bytes | None, ...]]:
    results: list[Rows | StatementError] = []
    drive(conn, [Transaction([Statement(
        b"select name, statement from pg_prepared_statements order by name", (),
        results.append)])])
    assert isinstance(results[0], Rows)
    return results[0].values


def test_a_statement_is_prepared_once_and_bound_from_then_on(conn):
    for _ in range(3):
        (rows,) = _select(conn)
        assert isinstance(rows, Rows) and rows.values == [(b"1", b"one")]
    prepared = [row for row in _prepared(conn) if row[1] == SELECT]
    assert len(prepared) == 1, _prepared(conn)


def test_a_changed_result_type_fails_one_use_then_the_statement_is_prepared_again(conn, dsn):
    assert isinstance(_select(conn)[0], Rows)
    with psycopg.connect(dsn, autocommit=True) as other:  # a migration, say
        other.execute("alter table prepared_probe add column b int default 7")
    (first,) = _select(conn)
    assert isinstance(first, StatementError) and first.sqlstate == "0A000", first
    (again,) = _select(conn)
    assert isinstance(again, Rows) and again.values == [(b"1", b"one", b"7")]


def test_a_statement_the_session_forgot_is_prepared_again(conn):
    assert isinstance(_select(conn)[0], Rows)
    _select(conn, Statement(b"deallocate all", (), lambda result: None))
    (first,) = _select(conn)
    assert isinstance(first, StatementError) and first.sqlstate == "26000", first
    (again,) = _select(conn)
    assert isinstance(again, Rows)


def test_a_text_that_fails_to_prepare_is_reported_by_its_statement_and_harms_no_other(conn, dsn):
    broken: list[Rows | StatementError] = []
    results = _select(conn)
    drive(conn, [Transaction([Statement(b"select * from no_such_table", (), broken.append)]),
                 Transaction([Statement(SELECT, ("1",), results.append)])])
    assert isinstance(broken[0], StatementError)
    assert isinstance(results[1], Rows)
    # Nothing of it is kept: once the table exists, the same text works.
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("create table no_such_table (x int)")
    drive(conn, [Transaction([Statement(b"select * from no_such_table", (), broken.append)])])
    assert isinstance(broken[1], Rows)


def test_without_prepare_nothing_outlives_the_transaction(dsn, probe_table):
    conn = PgConn(dsn, pipeline=True, prepare=False)
    try:
        for _ in range(3):
            assert isinstance(_select(conn)[0], Rows)
        assert _prepared(conn) == []
    finally:
        conn.close()
