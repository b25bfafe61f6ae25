"""What a user or an attacker could throw at every public surface: the Client,
the SQL functions, the CLI and the executor. Each gets a clear error naming
the flow, step or run and what to do, or a failed task with a readable
message; nothing else is written, lost or broken.

The supervisor's side (the same bad outputs and inputs while it serves other
runs) is in tests/e2e/test_bad_input_e2e.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import uuid
from typing import Any

import psycopg
import pytest

from executor import drain
from executor.executor import DEFAULT_MAX_OUTPUT_BYTES
from pgflow import (
    Client,
    Flow,
    FlowNotFoundError,
    InvalidInputError,
    RunNotFoundError,
    db,
    worker_api,
)
from pgflow import client as client_module
from supervisor.cli import main
from tests.integration.helpers import count, single_flow

SQL_SLUGS = [
    "x'); drop table pgflow.runs; --",
    'x"; delete from pgflow.flows; --',
    "single' or '1'='1",
    "single; select pg_sleep(10)",
    "$$; drop schema pgflow cascade; $$",
]


def nothing_started(conn: psycopg.Connection) -> bool:
    return count(conn, "select count(*) from pgflow.runs") == 0 \
        and count(conn, "select count(*) from pgflow.tasks") == 0


def schema_intact(conn: psycopg.Connection) -> None:
    tables = {r[0] for r in conn.execute(
        "select tablename from pg_tables where schemaname = 'pgflow'")}
    assert {"flows", "steps", "deps", "runs", "step_states", "tasks", "queue", "workers"} <= tables


@pytest.fixture
def echo(client: Client) -> Flow:
    flow = single_flow()
    client.register(flow)
    return flow


# -- run inputs through the Client ----------------------------------------------


@dataclasses.dataclass
class Order:
    number: int


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"self": None}
    value["self"] = value
    return value


def _deep(levels: int) -> list[Any]:
    root: list[Any] = []
    inner = root
    for _ in range(levels - 1):
        inner.append([])
        inner = inner[0]
    return root


NOT_JSON = [
    pytest.param({"x": float("nan")}, "$.x is NaN", id="nan"),
    pytest.param([1, float("inf")], "$[1] is Infinity", id="infinity"),
    pytest.param({"when": datetime.datetime(2024, 1, 2, 3, 4)}, "value.isoformat()",
                 id="datetime"),
    pytest.param({"price": decimal.Decimal("1.10")}, "$.price is a Decimal", id="decimal"),
    pytest.param({"id": uuid.UUID(int=7)}, "send str(value)", id="uuid"),
    pytest.param({"tags": {"a", "b"}}, "$.tags is a set", id="set"),
    pytest.param({"raw": b"bytes"}, "$.raw is bytes", id="bytes"),
    pytest.param(Order(1), "dataclasses.asdict", id="dataclass"),
    pytest.param({"name": "nul\x00inside"}, "NUL character", id="nul"),
    pytest.param({"text": "\udc80"}, "lone surrogate", id="surrogate"),
    pytest.param({1: "one"}, "key of type int", id="int-key"),
    pytest.param({"n": 2**70}, "beyond 64 bits", id="bigint"),
    pytest.param(object(), "builtins.object", id="object"),
    pytest.param((n for n in range(2)), "a generator", id="generator"),
    pytest.param(_cyclic(), "contains itself", id="cycle"),
    pytest.param(_deep(300), "levels deep", id="deep"),
]


@pytest.mark.parametrize("value, problem", NOT_JSON)
def test_start_flow_refuses_input_that_is_not_plain_json(client, conn, echo, value, problem):
    with pytest.raises(InvalidInputError) as refused:
        client.start_flow("single", value)
    message = str(refused.value)
    assert message.startswith("Flow 'single': the run input is not JSON: $")
    assert problem in message and "Nothing was started" in message
    assert nothing_started(conn)


@pytest.mark.parametrize("value, problem", NOT_JSON[:3])
def test_start_flows_refuses_the_whole_batch_naming_the_bad_input(client, conn, echo, value,
                                                                   problem):
    with pytest.raises(InvalidInputError, match=r"the run input #2 is not JSON") as refused:
        client.start_flows("single", [{"ok": 1}, value, {"ok": 3}])
    assert problem in str(refused.value)
    assert nothing_started(conn)


def test_an_input_over_the_default_limit_is_refused_before_it_is_sent(client, conn, echo):
    limit = client_module.DEFAULT_MAX_INPUT_BYTES
    assert limit == 16 * 1024 * 1024
    with pytest.raises(InvalidInputError) as refused:
        client.start_flow("single", {"blob": "x" * limit})
    message = str(refused.value)
    assert f"is {limit + 11:,} bytes of JSON, over the limit of {limit:,}" in message
    assert "Client(max_input_bytes=...)" in message and "pass a reference" in message
    assert nothing_started(conn)
    # Just under it is fine, and comes back whole.
    run_id = client.start_flow("single", "y" * (limit - 2))
    assert len(client.get_run(run_id).input) == limit - 2


def test_the_input_limit_is_configurable_and_exact(dsn, conn, echo):
    with Client(dsn, max_input_bytes=100) as small:
        small.start_flow("single", "a" * 98)  # 100 bytes with its quotes
        with pytest.raises(InvalidInputError, match="101 bytes of JSON, over the limit of 100"):
            small.start_flow("single", "a" * 99)
        with pytest.raises(InvalidInputError, match="input #3 is 101 bytes"):
            small.start_flows("single", ["a", "b", "a" * 99])
    assert count(conn, "select count(*) from pgflow.runs") == 1


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, 2**40, "16MB"])
def test_an_absurd_input_limit_is_refused(dsn, limit):
    with pytest.raises(ValueError, match="max_input_bytes must be an int from 1 to"):
        Client(dsn, max_input_bytes=limit)


def test_a_batch_too_large_for_one_statement_is_refused(client, conn, echo, monkeypatch):
    monkeypatch.setattr(client_module, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(InvalidInputError, match=r"3 run inputs are 1,506 bytes of JSON in all"
                                                r".*smaller batches"):
        client.start_flows("single", ["z" * 500] * 3)
    assert nothing_started(conn)


@pytest.mark.parametrize("inputs", ["abc", b"abc", {"a": 1}, 5])
def test_start_flows_wants_a_list_of_inputs(client, conn, echo, inputs):
    with pytest.raises(InvalidInputError, match="start_flows takes a list of run inputs"):
        client.start_flows("single", inputs)
    assert nothing_started(conn)


def test_what_json_allows_is_accepted_as_is(client, echo):
    value = {"tuple": (1, 2), "escaped": "\\u0000 is text", "max": 2**64 - 1, "min": -(2**63),
             "tiny": 5e-324, "huge": 1.7976931348623157e308, "unicode": "\u00e9\U0001F600",
             "deep": _deep(200)}
    run_id = client.start_flow("single", value)
    stored = client.get_run(run_id).input
    assert stored == {**value, "tuple": [1, 2]}


# -- input Postgres accepts from SQL but Python cannot decode -------------------


def test_input_from_sql_that_python_cannot_decode_fails_its_task_not_the_worker(client, conn,
                                                                                echo):
    deep = conn.execute("select run_id from pgflow.start_flow('single', %s::jsonb)",
                        ("[" * 1100 + "]" * 1100,)).fetchone()[0]
    huge_number = conn.execute(
        "select run_id from pgflow.start_flow('single', '{\"amount\": 1e400}')").fetchone()[0]
    fine = client.start_flow("single", {"amount": 1})

    assert drain(client, single_flow(), wait_for_retries=True) == 1  # only the fine one ran

    assert client.get_run(fine).status == "completed"
    for run_id, problem in ((deep, "depth"), (huge_number, "infinity")):
        status, error = conn.execute("select status, error from pgflow.runs where run_id = %s",
                                     (run_id,)).fetchone()
        assert status == "failed"
        assert error.startswith(f"Flow 'single', step 'only', run {run_id}: the task's "
                                "input cannot be decoded")
        assert problem in error
        # Reading it whole from Python says why it cannot, and how to read what can be read.
        with pytest.raises(InvalidInputError, match=f"Run {run_id} holds JSON that Python "
                                                    "cannot decode.*select status, error"):
            client.get_run(run_id)


# -- slugs and run ids with SQL in them -----------------------------------------


@pytest.mark.parametrize("slug", SQL_SLUGS)
def test_a_slug_with_sql_in_it_is_an_unknown_flow_at_every_client_call(client, conn, echo, slug):
    with pytest.raises(FlowNotFoundError, match="is not registered, and cannot be"):
        client.start_flow(slug, {})
    with pytest.raises(FlowNotFoundError, match="is not registered, and cannot be"):
        client.start_flows(slug, [{}])
    with pytest.raises(InvalidInputError, match="flow must be a flow slug"):
        client.list_runs(flow=slug)
    assert nothing_started(conn)
    schema_intact(conn)


@pytest.mark.parametrize("slug", SQL_SLUGS)
def test_a_slug_with_sql_in_it_is_data_to_every_sql_function(client, conn, echo, slug):
    """What another language could send: each function treats the slug as a value."""
    for start in ("select pgflow.start_flow(%s, '{}')",
                  "select pgflow.start_flows(%s, array['{}'::jsonb])"):
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(start, (slug,))
        assert isinstance(db.engine_error(refused.value), FlowNotFoundError)
    worker = uuid.uuid4()
    worker_api.register_worker(conn, worker, slug, 1, [slug])
    assert conn.execute("select hostname, flows from pgflow.workers where worker_id = %s",
                        (worker,)).fetchone() == (slug, [slug])
    assert worker_api.claim(conn, worker, [slug, "single"], 10) == []
    assert worker_api.seconds_until_next_task(conn, [slug]) is None
    assert worker_api.queue_stats(conn, [slug]) == {}
    assert worker_api.heartbeat(conn, worker, []) == set()
    with pytest.raises(psycopg.errors.CheckViolation, match="flow_slug"):
        conn.execute("select pgflow.register_flow(%s, %s, '{}')",
                     (slug, '{"steps": [{"slug": "a", "type": "single", "depends_on": []}]}'))
    with pytest.raises(psycopg.errors.CheckViolation, match="step_slug"):
        conn.execute("select pgflow.register_flow('fine', %s, '{}')",
                     (f'{{"steps": [{{"slug": "{slug.replace(chr(34), "")}", '
                      '"type": "single", "depends_on": []}]}',))
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("select pgflow.cancel_run(%s::uuid)", (slug,))
    schema_intact(conn)
    assert count(conn, "select count(*) from pgflow.flows") == 1  # only 'single'
    run_id = client.start_flow("single", {"still": "works"})
    drain(client, echo)
    assert client.get_run(run_id).output == {"only": {"still": "works"}}


FORGED = ["'; drop table pgflow.runs; --", "not-a-uuid", "0" * 10_000, ""]


@pytest.mark.parametrize("run_id", FORGED)
def test_a_run_id_that_is_no_uuid_is_refused_at_every_client_call(client, conn, echo, run_id):
    calls = [lambda: client.get_run(run_id), lambda: client.cancel_run(run_id),
             lambda: client.wait(run_id, timeout=0),
             lambda: client.start_flow("single", 1, run_id=run_id),
             lambda: client.start_flows("single", [1], run_ids=[run_id])]
    for call in calls:
        with pytest.raises(InvalidInputError, match="is not a UUID") as refused:
            call()
        assert len(str(refused.value)) < 300  # a 10,000-character id is not echoed whole
    assert nothing_started(conn)
    schema_intact(conn)


def test_a_forged_run_id_is_an_unknown_run(client, conn, echo):
    forged = uuid.uuid4()
    for call in (client.get_run, client.cancel_run, lambda r: client.wait(r, timeout=0)):
        with pytest.raises(RunNotFoundError, match=f"Run {forged} does not exist"):
            call(forged)
    other = Flow("other")
    other.step(slug="s")(lambda i, c: i)
    client.register(other)
    taken = client.start_flow("other", 1)
    with pytest.raises(InvalidInputError, match=f"Run {taken} already exists for flow 'other', "
                                                "not for flow 'single'"):
        client.start_flow("single", 1, run_id=taken)
    assert count(conn, "select count(*) from pgflow.runs") == 1


def test_an_unknown_flow_says_how_to_register_it_and_writes_nothing(client, conn):
    for call in (lambda: client.start_flow("nope", {}), lambda: client.start_flows("nope", [1])):
        with pytest.raises(FlowNotFoundError, match=r"Flow 'nope' is not registered. Register"):
            call()
    with pytest.raises(InvalidInputError, match="a Flow or its slug"):
        client.start_flow(42, {})  # type: ignore[arg-type]
    assert nothing_started(conn)


# -- the command line -----------------------------------------------------------


def pgflow(capsys, dsn: str, *args: str) -> tuple[int, str]:
    code = main([*args, "--database-url", dsn])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


@pytest.mark.parametrize("slug", SQL_SLUGS[:2])
def test_the_cli_takes_sql_in_slugs_and_run_ids_as_data(capsys, conn, dsn, echo, slug):
    code, err = pgflow(capsys, dsn, "start", slug, "--input", "{}")
    assert code == 1 and "is not registered, and cannot be" in err
    code, err = pgflow(capsys, dsn, "runs", "--flow", slug)
    assert code == 1 and "flow must be a flow slug" in err
    for command in ("run", "cancel"):
        code, err = pgflow(capsys, dsn, command, slug)
        assert code == 1 and "is not a UUID" in err
    code, err = pgflow(capsys, dsn, "start", "single", "--run-id", slug)
    assert code == 1 and "is not a UUID" in err
    assert nothing_started(conn)
    schema_intact(conn)


@pytest.mark.parametrize("text, problem", [
    ("NaN", "$ is NaN"), ('{"x": Infinity}', "$.x is Infinity"),
    ("123456789012345678901234567890", "beyond 64 bits"),
])
def test_the_cli_refuses_what_python_json_reads_but_json_is_not(capsys, conn, dsn, echo, text,
                                                               problem):
    code, err = pgflow(capsys, dsn, "start", "single", "--input", text)
    assert code == 1 and problem in err
    assert nothing_started(conn)


@pytest.mark.parametrize("args, problem", [
    (["runs", "--limit", "0"], "limit must be a positive int"),
    (["runs", "--limit", "-5"], "limit must be a positive int"),
])
def test_the_cli_refuses_out_of_range_options_in_one_line(capsys, dsn, args, problem):
    code, err = pgflow(capsys, dsn, *args)
    assert code == 1 and problem in err


# -- handlers whose output cannot be stored ---------------------------------------


class Unencodable:
    pass


def _recursive() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


BAD_OUTPUTS = {
    "nan": (lambda: {"ratio": float("nan")}, "$.ratio is NaN"),
    "infinity": (lambda: [float("-inf")], "$[0] is -Infinity"),
    "datetime": (lambda: {"at": datetime.datetime(2024, 1, 1)}, "$.at is a datetime"),
    "uuid": (lambda: uuid.UUID(int=3), "$ is a UUID"),
    "decimal": (lambda: decimal.Decimal("2.5"), "$ is a Decimal"),
    "object": (lambda: {"thing": Unencodable()}, "test_bad_input.Unencodable, not JSON"),
    "generator": (lambda: (n for n in range(3)), "$ is a generator, not JSON; return a list"),
    "recursive": (_recursive, "$[1] contains itself"),
    "nul": (lambda: {"text": "a\x00b"}, "NUL character"),
    "int_key": (lambda: {1: "one"}, "key of type int"),
    "huge": (lambda: "h" * DEFAULT_MAX_OUTPUT_BYTES,
             f"over the limit of {DEFAULT_MAX_OUTPUT_BYTES:,} (max_output_bytes)"),
}


def outputs_flow() -> Flow:
    flow = Flow("outputs", max_attempts=1)

    @flow.step()
    def produce(input, ctx):
        if input == "good":
            return {"fine": [1, 2.5, None, "x"]}
        return BAD_OUTPUTS[input][0]()

    return flow


def test_handlers_returning_what_cannot_be_stored_fail_their_own_task_readably(client):
    flow = outputs_flow()
    client.register(flow)
    bad = {kind: client.start_flow(flow, kind) for kind in BAD_OUTPUTS}
    good = [client.start_flow(flow, "good") for _ in range(3)]

    drain(client, flow)

    for kind, run_id in bad.items():
        run = client.get_run(run_id)
        assert run.status == "failed", kind
        assert run.error.startswith("Output of flow 'outputs', step 'produce' is ") if kind == \
            "huge" else run.error.startswith("Output is not JSON-serializable: "), run.error
        assert BAD_OUTPUTS[kind][1] in run.error, (kind, run.error)
        assert len(run.error) < 1000
    for run_id in good:
        assert client.get_run(run_id).output == {"produce": {"fine": [1, 2.5, None, "x"]}}


def test_the_cli_refuses_input_nested_deeper_than_python_reads(capsys, conn, dsn, echo, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, err = pgflow(capsys, dsn, "start", "single", "--input", f"@{deep}")
    assert code == 78 and f"--input @{deep} nests deeper than Python can read" in err
    assert nothing_started(conn)
