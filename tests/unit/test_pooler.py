"""What changes behind a connection pooler, without a database: settings,
error messages, and the flow input a claim carries to the executor."""

from __future__ import annotations

import uuid

import orjson
import psycopg
import pytest

from executor import protocol
from executor.executor import build_context
from pgflow import Client, PgflowError, db
from pgflow.task import ClaimedTask
from supervisor import preflight
from supervisor.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(database_url="postgresql://pgflow@bouncer:6432/app", flows="f",
                    **values)  # type: ignore[arg-type]


def test_the_listen_url_defaults_to_the_database_url_except_through_a_transaction_pooler():
    assert settings().listen_target() == "postgresql://pgflow@bouncer:6432/app"
    assert settings(pooler="session").listen_target() == "postgresql://pgflow@bouncer:6432/app"
    assert settings(pooler="transaction").listen_target() is None
    assert settings(pooler="transaction", listen_url="postgresql://db/app").listen_target() \
        == "postgresql://db/app"


def test_an_unknown_pooler_is_refused():
    with pytest.raises(ValueError, match="pooler"):
        settings(pooler="statement")
    with pytest.raises(ValueError, match="none, session, transaction"):
        Client("postgresql://db/app", pooler="statement")  # type: ignore[arg-type]


@pytest.mark.parametrize("message, code, advice", [
    ('connection to server at "10.0.0.5", port 6432 failed: FATAL:  unsupported startup '
     "parameter: options", 78, "ignore_startup_parameters"),
    ('connection to server at "10.0.0.5", port 6432 failed: FATAL:  no such database: ap',
     78, "[databases]"),
    ('connection to server at "10.0.0.5", port 6432 failed: ERROR:  pgbouncer cannot connect '
     "to server", 1, "cannot reach Postgres"),
    ('connection to server at "10.0.0.5", port 6432 failed: FATAL:  no more connections '
     "allowed (max_client_conn)", 1, "max_client_conn"),
])
def test_a_poolers_refusal_is_reported_as_what_it_is(message: str, code: int, advice: str):
    problem = preflight.explain(psycopg.OperationalError(message),
                                "postgresql://pgflow:secret@10.0.0.5:6432/app")
    assert problem.exit_code == code
    assert advice in str(problem)
    assert "secret" not in str(problem)
    if code == 78:
        assert "check that Postgres is running" not in str(problem)


def test_a_prepared_statement_lost_to_a_transaction_pooler_names_the_setting():
    for kind in (psycopg.errors.DuplicatePreparedStatement,
                 psycopg.errors.InvalidSqlStatementName):
        error = db.pooler_error(kind('prepared statement "_pg3_1" already exists'))
        assert isinstance(error, PgflowError)
        assert 'pooler="transaction"' in str(error) and "PGFLOW_POOLER" in str(error)
    assert db.pooler_error(psycopg.errors.InvalidSqlStatementName('"mine" does not exist')) is None
    assert db.pooler_error(psycopg.errors.UniqueViolation("duplicate key")) is None


def _task(**values: object) -> ClaimedTask:
    fields: dict[str, object] = dict(task_id=1, token=2, run_id=uuid.uuid4(), flow_slug="f",
                                     step_slug="s", task_index=0, attempt=1, timeout_ms=1000,
                                     input={"dep": [1, 2]})
    return ClaimedTask(**{**fields, **values})  # type: ignore[arg-type]


def test_a_request_carries_the_flow_input_after_a_newline_undecoded():
    task = _task(flow_input_json='{"tag": "x\\ny", "n": [1, 2]}')
    body = protocol.request_for(task)[protocol.HEADER.size:]
    head, tail = body.split(b"\n", 1)
    assert orjson.loads(head)["input"] == {"dep": [1, 2]}
    assert tail == b'{"tag": "x\\ny", "n": [1, 2]}'
    decoded = protocol.decode_request(body)
    assert decoded.flow_input_json == b'{"tag": "x\\ny", "n": [1, 2]}'
    assert decoded.input == {"dep": [1, 2]}
    plain = protocol.decode_request(protocol.request_for(_task())[protocol.HEADER.size:])
    assert plain.flow_input_json is None


def test_ctx_flow_input_uses_what_the_claim_carried_without_a_connection():
    def no_connection() -> None:
        raise AssertionError("no query when the claim carried the flow input")

    ctx = build_context(_task(flow_input_json=b'{"tag": "small"}'), no_connection)
    assert not ctx.flow_input_loaded
    assert ctx.flow_input == {"tag": "small"}
    ctx = build_context(_task(input={"n": 1}, input_is_flow_input=True), no_connection)
    assert ctx.flow_input == {"n": 1}


def test_every_advisory_lock_is_transaction_level():
    """A session-level advisory lock would stay with a pooled server session
    (and its next client) after the transaction that took it."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sources = [*root.joinpath("pgflow").rglob("*.sql"), *root.joinpath("pgflow").rglob("*.py"),
               *root.joinpath("supervisor").rglob("*.py"), *root.joinpath("executor").rglob("*.py")]
    taken = [(path.name, call) for path in sources
             for call in re.findall(r"pg_(?:try_)?advisory_\w*lock\w*", path.read_text())]
    assert taken, "the engine takes advisory locks"
    assert [t for t in taken if "xact" not in t[1]] == []
