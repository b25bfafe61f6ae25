"""Least privilege end to end: a supervisor logged in as a member of
pgflow_worker serves runs that an application logged in as a member of
pgflow_app starts and waits for."""

from __future__ import annotations

from pgflow import Client, migrations


def test_a_supervisor_as_pgflow_worker_completes_runs_an_app_as_pgflow_app_starts(
        dsn, app_dsn, worker_dsn, start_supervisor):
    # Default settings: PGFLOW_MIGRATE=true finds the schema current and does
    # nothing; the supervisor registers its flows as the worker role.
    supervisor = start_supervisor(worker_dsn)
    with Client(app_dsn) as app:
        diamonds = app.start_flows("e2e_diamond", [{"n": n} for n in range(20)])
        reads_input = app.start_flow("e2e_reads_input", {"from": "the app"})  # ctx.flow_input
        failing = app.start_flow("e2e_fail", "x")
        for n, run_id in enumerate(diamonds):
            assert app.wait(run_id, timeout=30).output == {"d": 5 * (n + 1)}
        assert app.wait(reads_input, timeout=30).output == {"uses_flow_input": {"from": "the app"}}
        assert app.wait(failing, timeout=30).status == "failed"
    assert "permission denied" not in supervisor.log()


def test_a_supervisor_that_may_not_migrate_or_register_stops_with_78_naming_the_fix(
        dsn, app_dsn, worker_dsn, conn, start_supervisor):
    as_app = start_supervisor(app_dsn, wait=False)
    assert as_app.wait(30) == 78
    assert "permission denied for function register_flow" in as_app.log()
    assert "Traceback" not in as_app.log()

    latest = migrations.available()[-1]
    conn.execute("delete from pgflow.schema_migrations where version = %s", (latest.version,))
    pending = start_supervisor(worker_dsn, wait=False)
    assert pending.wait(30) == 78
    assert (f"cannot apply migrations ({latest.version:04d}_{latest.name})" in pending.log()
            and "Run `pgflow migrate` as postgres (the owner)" in pending.log())
