"""Bad input through a real supervisor: handlers returning what cannot be
stored, an input only SQL could store, handlers that close their stdio or
fork, all at once, while the supervisor serves other runs. Each bad task
fails with a readable message (or completes, when nothing was wrong with
its answer); every other run completes; nothing is left behind."""

from __future__ import annotations

import subprocess
import time

from pgflow import Client
from tests.e2e.conftest import PGFLOW, query

EXPECTED = {
    "nan": "Output is not JSON-serializable: $.ratio is NaN",
    "infinity": "Output is not JSON-serializable: $[0] is Infinity",
    "datetime": "Output is not JSON-serializable: $.at is a datetime",
    "uuid": "Output is not JSON-serializable: $ is a UUID",
    "decimal": "Output is not JSON-serializable: $ is a Decimal",
    "set": "Output is not JSON-serializable: $.tags is a set, not JSON; send a list",
    "generator": "Output is not JSON-serializable: $ is a generator",
    "recursive": "Output is not JSON-serializable: $[1] contains itself",
    "nul": "Output is not JSON-serializable: $ (a string) holds a NUL character",
    "object": "Output is not JSON-serializable: $ is an e2e_bad_flows.Unencodable",
    "huge": "over the limit of 1,048,576 (max_output_bytes)",
}


def test_bad_outputs_and_inputs_fail_their_own_runs_while_the_others_complete(
        dsn, start_supervisor):
    supervisor = start_supervisor(dsn, "--max-output-bytes", str(1024 * 1024),
                                  flows="e2e_bad_flows,e2e_flows")
    with Client(dsn) as client:
        good = client.start_flows("e2e_diamond", [{"n": n} for n in range(30)])
        bad = {kind: client.start_flow("e2e_bad_outputs", kind) for kind in EXPECTED}
        forked = client.start_flow("e2e_bad_outputs", "fork")
        closes_stdio = client.start_flow("e2e_closes_stdio", None)
        (undecodable,) = query(dsn, "select run_id from pgflow.start_flow('e2e_noop', %s::jsonb)",
                               "[" * 1100 + "]" * 1100)[0]
        good += client.start_flows("e2e_diamond", [{"n": n} for n in range(30, 60)])

        for n, run_id in enumerate(good):
            assert client.wait(run_id, timeout=60).output == {"d": 5 * (n + 1)}
        for kind, run_id in bad.items():
            run = client.wait(run_id, timeout=30)
            assert run.status == "failed" and EXPECTED[kind] in (run.error or ""), (kind, run.error)
            assert len(run.error or "") < 1000
        assert client.wait(forked, timeout=30).output == {"produce": {"forked": True}}
        assert client.wait(closes_stdio, timeout=30).status == "completed"
    # Python cannot read that run's input (Client.get_run says so): ask SQL.
    deadline = time.monotonic() + 30
    while query(dsn, "select status from pgflow.runs where run_id = %s", undecodable) == [
            ("started",)] and time.monotonic() < deadline:
        time.sleep(0.2)
    ((status, error),) = query(dsn, "select status, error from pgflow.runs where run_id = %s",
                               undecodable)
    assert status == "failed"
    assert error.startswith(f"Flow 'e2e_noop', step 'echo', run {undecodable}: the task's input "
                            "cannot be decoded")
    assert query(dsn, "select count(*) from pgflow.queue") == [(0,)]
    assert query(dsn, "select count(*) from pgflow.runs where status = 'started'") == [(0,)]
    assert supervisor.proc.poll() is None
    assert "Traceback" not in supervisor.log()


def test_a_flow_module_that_exits_or_recurses_at_import_stops_with_78(dsn, tmp_path):
    """A module that raises is tested in test_cli_errors.py; these leave in other ways."""
    for name, body, shown in [
        ("exits_flows", "import sys\nsys.exit('no config found')\n", "SystemExit: no config found"),
        ("recursing_flows", "def f():\n    return f()\n\nf()\n", "RecursionError"),
    ]:
        (tmp_path / f"{name}.py").write_text(body)
        result = subprocess.run(
            [str(PGFLOW), "supervise", "--database-url", dsn, "--flows", name,
             "--metrics-port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 78, result.stderr
        assert f"flow module {name!r} raised while being imported" in result.stderr
        assert shown in result.stderr and "Traceback" not in result.stderr
