"""Least privilege: the engine's functions run as their owner with a fixed
search_path; pgflow_app and pgflow_worker can each do their job and nothing
more; `migrate` keeps it so.

The two roles belong to the cluster (other tests on the same server may use
them at the same time), so they are created if missing and never dropped;
each test logs in through login roles of its own, members of one of them.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from executor import drain
from pgflow import (
    Client,
    FlowNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
    PgflowError,
    db,
    migrations,
)
from supervisor.cli import main
from tests.integration.helpers import HandWorker, count, diamond_flow, map_flow, single_flow

APP_FUNCTIONS = {"start_flow", "start_flows", "cancel_run", "retry_run"}
WORKER_FUNCTIONS = {"claim_tasks", "complete_tasks", "fail_tasks", "release_tasks", "heartbeat",
                    "requeue_expired", "next_visible_at", "register_worker", "stop_worker",
                    "register_flow", "retention_tick",
                    "report_worker", "start_due_ticks"}
# Public functions (no leading "_") that only the owner may call, on purpose.
OWNER_ONLY = {"prune_runs", "prunable_runs"}  # deleting history is an operator's act
WORKER_TABLES = {"flows", "steps", "deps", "runs", "queue", "workers", "schema_migrations"}
TABLES = {"flows", "steps", "deps", "runs", "step_states", "tasks", "queue", "workers",
          "schema_migrations"}


def connect(dsn: str) -> psycopg.Connection:
    return db.connect(dsn, "pgflow role test")


def refused(conn: psycopg.Connection, statement: str, *params: object) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params or None)


# -- the catalog ------------------------------------------------------------------


def test_every_public_function_is_hardened_and_granted_deliberately(conn, login):
    functions = conn.execute("""
        select p.proname, p.prosecdef, coalesce(p.proconfig, '{}'),
               coalesce(array(select a.grantee::regrole::text
                              from aclexplode(p.proacl) a where a.grantee <> p.proowner
                              order by 1), '{}'),
               p.proacl is null
        from pg_proc p where p.pronamespace = 'pgflow'::regnamespace""").fetchall()
    assert functions
    for name, secdef, config, grantees, default_acl in functions:
        assert not default_acl and "-" not in grantees, f"{name}: PUBLIC may execute it"
        if name.startswith("_"):
            assert grantees == [], f"helper {name} is granted to {grantees}"
            continue
        assert secdef, f"{name} is not SECURITY DEFINER"
        assert "search_path=pg_catalog, pgflow, pg_temp" in config, f"{name}: {config}"
        expected = ({"pgflow_app"} if name in APP_FUNCTIONS else set()) | (
            {"pgflow_worker"} if name in WORKER_FUNCTIONS else set())
        assert expected or name in OWNER_ONLY, (
            f"pgflow.{name} is new: list it in pgflow/sql/permissions.sql for pgflow_app or "
            "pgflow_worker (and in this test), or in OWNER_ONLY here if only the owner may call it")
        assert set(grantees) == expected, f"{name}: granted to {grantees}, expected {expected}"


def test_tables_are_read_only_for_the_roles_and_closed_to_public(conn, login):
    acl = dict(conn.execute("""
        select c.relname, coalesce(array(select a.grantee::regrole::text || ':' || a.privilege_type
                                         from aclexplode(c.relacl) a
                                         where a.grantee <> c.relowner order by 1), '{}')
        from pg_class c
        where c.relnamespace = 'pgflow'::regnamespace and c.relkind in ('r', 'v')""").fetchall())
    for table, grants in acl.items():
        expected = {"pgflow_app:SELECT"} | (
            {"pgflow_worker:SELECT"} if table in WORKER_TABLES else set())
        assert set(grants) == expected, f"{table}: {grants}"


def test_migrate_puts_back_what_someone_granted_by_hand_and_is_quiet_otherwise(conn, login):
    conn.execute("grant insert, update on pgflow.runs to pgflow_app")
    conn.execute("grant execute on function pgflow.claim_tasks(uuid, text[], integer, numeric) "
                 "to pgflow_app, public")
    conn.execute("alter function pgflow.cancel_run(uuid) security invoker reset search_path")
    conn.execute("grant select on pgflow.step_states to pgflow_worker")
    migrations.migrate(conn)
    test_every_public_function_is_hardened_and_granted_deliberately(conn, login)
    test_tables_are_read_only_for_the_roles_and_closed_to_public(conn, login)

    def versions() -> tuple[int, ...]:
        return conn.execute("""
            select (select sum(xmin::text::bigint) from pg_proc
                    where pronamespace = 'pgflow'::regnamespace),
                   (select sum(xmin::text::bigint) from pg_class
                    where relnamespace = 'pgflow'::regnamespace),
                   (select xmin::text::bigint from pg_namespace where nspname = 'pgflow')
            """).fetchone()

    before = versions()
    assert migrations.migrate(conn, roles=True) == []
    assert versions() == before, "a migrate with nothing to do must not rewrite the catalogs"


# -- pgflow_app ---------------------------------------------------------------------


def test_the_app_role_starts_reads_waits_for_and_cancels_runs(client, app_dsn, conn):
    client.register(diamond_flow())  # as the owner: the app role cannot register
    with Client(app_dsn) as app:
        run_id = app.start_flow("diamond", {"n": 1})
        more = app.start_flows("diamond", [{"n": 2}, {"n": 3}])
        assert app.get_run(run_id).status == "started"
        assert {r.run_id for r in app.list_runs(flow="diamond")} == {run_id, *more}
        app.cancel_run(more[1])
        drain(client, diamond_flow())  # someone else runs the tasks
        assert app.wait(run_id, timeout=10).output == {"d": 10}
        assert app.get_run(more[1]).status == "cancelled"
        assert app.migrate() == []  # up to date: nothing it could do, nothing to do
        with pytest.raises(FlowNotFoundError):
            app.start_flow("nope", {})
        with pytest.raises(InvalidInputError, match="root map step 'double' needs a JSON array"):
            client.register(map_flow())
            app.start_flow("mapper", {"not": "an array"})


def test_the_app_role_can_use_the_read_and_control_commands(capsys, client, app_dsn):
    client.register(diamond_flow())
    run_id = client.start_flow("diamond", {"n": 1})
    for command in (["flows"], ["runs"], ["workers"], ["run", str(run_id)], ["cancel", str(run_id)],
                    ["start", "diamond", "--input", '{"n": 5}'], ["migrate", "--dry-run"]):
        assert main([*command, "--database-url", app_dsn]) == 0, capsys.readouterr()
    capsys.readouterr()


def test_the_app_role_cannot_claim_answer_register_or_touch_a_table(client, app_dsn, conn):
    flow = single_flow()
    client.register(flow)
    run_id = client.start_flow(flow, {"x": 1})
    worker = HandWorker(conn, ["single"])
    task = worker.claim_one()
    answer = f'[[{task.task_id}, {task.token}, "forged"]]'
    with connect(app_dsn) as app:
        for statement, params in [
            ("select * from pgflow.claim_tasks(gen_random_uuid(), array['single'], 10)", ()),
            ("select * from pgflow.complete_tasks(%s::jsonb)", (answer,)),
            ("select * from pgflow.fail_tasks(%s::jsonb)", (answer,)),
            ("select * from pgflow.release_tasks(%s::jsonb)", (answer,)),
            ("select * from pgflow.heartbeat(gen_random_uuid(), '[]', 30)", ()),
            ("select pgflow.requeue_expired()", ()),
            ("select pgflow.register_worker(gen_random_uuid(), 'h', 1, array['single'])", ()),
            ("select pgflow.register_flow('single', '{}', '{}', true)", ()),
            ("select pgflow._fail_runs(array[%s::uuid], array['only'], array['x'])", (run_id,)),
            ("select pgflow._advance(array[%s::uuid])", (run_id,)),
            ("insert into pgflow.runs (run_id, flow_slug, input, remaining_steps) "
             "values (gen_random_uuid(), 'single', '{}', 1)", ()),
            ("update pgflow.tasks set status = 'completed'", ()),
            ("delete from pgflow.queue", ()),
            ("truncate pgflow.workers", ()),
            ("alter table pgflow.runs add column owned boolean", ()),
            ("create table pgflow.mine (x int)", ()),
            ("create function pgflow.start_flow(text) returns int language sql as 'select 1'", ()),
            ("drop function pgflow.cancel_run(uuid)", ()),
        ]:
            refused(app, statement, *params)
        with pytest.raises(PermissionDeniedError, match=r"permission denied for function "
                           r"register_flow \(database role 'pgflow_t\w+_app'\). pgflow_app may"):
            Client(app_dsn).register(diamond_flow("other"))
    assert worker.complete(task, "real")  # the forged answers changed nothing
    assert client.get_run(run_id).output == {"only": "real"}


def test_a_search_path_of_the_callers_cannot_reach_inside_the_engine(client, app_dsn, conn):
    """The classic attack on SECURITY DEFINER functions: a role puts a schema of
    its own first in search_path, with a function the engine calls unqualified
    (jsonb_typeof), hoping it runs as the owner. The engine's functions set
    their own search_path, pg_catalog first: the impostor is never called."""
    client.register(map_flow())
    user = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
    conn.execute(sql.SQL("create schema evil authorization {}").format(sql.Identifier(user)))
    try:
        with connect(app_dsn) as app:
            app.execute("create table evil.calls (by text)")
            app.execute("""
                create function evil.jsonb_typeof(jsonb) returns text language sql as $$
                    insert into evil.calls values (current_user) returning 'array'
                $$""")
            app.execute("set search_path = evil, pg_catalog, pgflow")
            with pytest.raises(psycopg.Error) as error:
                app.execute("select pgflow.start_flow('mapper', '{\"not\": \"an array\"}')")
            assert isinstance(db.engine_error(error.value), InvalidInputError)
            assert app.execute("select count(*) from evil.calls").fetchone()[0] == 0
        assert count(conn, "select count(*) from pgflow.runs") == 0
    finally:
        conn.execute("drop schema evil cascade")


# -- pgflow_worker --------------------------------------------------------------


def test_the_worker_role_claims_answers_heartbeats_and_registers_flows(client, worker_dsn, conn):
    flow = diamond_flow()
    with Client(worker_dsn) as as_worker:
        assert as_worker.migrate() == []
        assert as_worker.register(flow) == "created"  # a supervisor registers what it serves
        run_id = client.start_flow(flow, {"n": 1})
        ran = drain(as_worker, flow)  # claim, complete, register/stop worker, as the worker
        assert ran == 4 and client.get_run(run_id).output == {"d": 10}

    again = single_flow("again", base_delay=0)
    client.register(again)
    other = client.start_flow(again, {"n": 2})
    with connect(worker_dsn) as wconn:
        worker = HandWorker(wconn, [again.slug])
        task = worker.claim_one()
        assert wconn.execute("select input from pgflow.runs where run_id = %s",
                             (other,)).fetchone()[0] == {"n": 2}  # ctx.flow_input
        assert worker.fail(task, "try again")
        task = worker.claim(lease_grace=0)[0]
        assert worker.claim() == []
        wconn.execute("select pgflow.requeue_expired()")
        wconn.execute("select * from pgflow.queue")  # queue depth for /metrics
        wconn.execute("select pgflow.stop_worker(%s)", (worker.worker_id,))
    assert client.get_run(other).steps["only"].attempts == 2


def test_the_worker_role_cannot_start_cancel_or_touch_a_table(client, worker_dsn, conn):
    client.register(single_flow())
    run_id = client.start_flow("single", 1)
    with connect(worker_dsn) as wconn:
        for statement, params in [
            ("select pgflow.start_flow('single', '1')", ()),
            ("select pgflow.start_flows('single', array['1'::jsonb])", ()),
            ("select pgflow.cancel_run(%s)", (run_id,)),
            ("select pgflow._cancel_unfinished(array[%s::uuid])", (run_id,)),
            ("select * from pgflow.step_states", ()),
            ("select * from pgflow.tasks", ()),
            ("update pgflow.runs set status = 'completed'", ()),
            ("insert into pgflow.queue (task_id, flow_slug, visible_at) values (1, 'x', now())", ()),
            ("delete from pgflow.flows", ()),
            ("alter table pgflow.queue set (fillfactor = 10)", ()),
        ]:
            refused(wconn, statement, *params)
    assert client.get_run(run_id).status == "started"


# -- migrate without owning the schema --------------------------------------------


def test_a_role_that_does_not_own_the_schema_cannot_migrate_and_is_told_who_can(conn, worker_dsn):
    latest = migrations.available()[-1]
    conn.execute("delete from pgflow.schema_migrations where version = %s", (latest.version,))
    with connect(worker_dsn) as wconn, pytest.raises(PgflowError) as refusal:
        migrations.migrate(wconn)
    message = str(refusal.value)
    assert f"cannot apply migrations ({latest.version:04d}_{latest.name})" in message
    assert "it does not own schema pgflow. Run `pgflow migrate` as postgres" in message
