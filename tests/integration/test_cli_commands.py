"""The read and control commands of `pgflow`, through main() against a real
database: what they print, their --json shape and their exit codes."""

from __future__ import annotations

import datetime
import json
import uuid

import pytest

from executor import drain
from pgflow import Client, Flow, migrations
from supervisor.cli import main
from tests.integration.helpers import HandWorker, diamond_flow


def pgflow_json(capsys, dsn: str, *args: str) -> tuple[int, object]:
    code = main([*args, "--database-url", dsn, "--json"])
    return code, json.loads(capsys.readouterr().out)


def pgflow_text(capsys, dsn: str, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--database-url", dsn])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def flaky_flow() -> Flow:
    flow = Flow("flaky", max_attempts=3, base_delay=0)

    @flow.step()
    def first(input, ctx):
        if ctx.attempt < 3:
            raise RuntimeError(f"not yet (attempt {ctx.attempt})")
        return input

    @flow.map(array="first")
    def each(item, ctx):
        return item

    return flow


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "pgflow 0.1.0"


def test_migrate_dry_run_lists_without_applying(capsys, empty_dsn):
    every = [f"{m.version:04d}_{m.name}" for m in migrations.available()]
    assert every[:2] == ["0001_schema", "0002_engine"]
    assert pgflow_json(capsys, empty_dsn, "migrate", "--dry-run") == (
        0, {"dry_run": True, "migrations": every})
    assert pgflow_json(capsys, empty_dsn, "migrate", "--dry-run")[1]["migrations"] != [], \
        "a dry run changes nothing"
    assert pgflow_json(capsys, empty_dsn, "migrate") == (
        0, {"dry_run": False, "migrations": every})
    assert pgflow_text(capsys, empty_dsn, "migrate", "--dry-run")[1] == "schema is up to date\n"


def test_read_commands_on_a_database_without_the_schema_say_run_migrate(capsys, empty_dsn):
    for command in (["runs"], ["flows"], ["workers"], ["run", str(uuid.uuid4())]):
        code, out, err = pgflow_text(capsys, empty_dsn, *command)
        assert code == 78 and out == ""
        assert err.endswith("has no pgflow schema: run `pgflow migrate`\n")


def test_flows_lists_steps_options_and_runs(capsys, client, dsn):
    client.register(diamond_flow(timeout=7))
    client.start_flow("diamond", {"n": 1})
    code, flows = pgflow_json(capsys, dsn, "flows")
    assert code == 0
    assert [f["flow_slug"] for f in flows] == ["diamond"]
    diamond = flows[0]
    assert (diamond["max_attempts"], diamond["base_delay"], diamond["timeout"]) == (3, 1.0, 7.0)
    assert diamond["runs"] == {"started": 1}
    assert [(s["slug"], s["type"], s["depends_on"]) for s in diamond["steps"]] == [
        ("a", "single", []), ("b", "single", ["a"]), ("c", "single", ["a"]),
        ("d", "single", ["b", "c"])]
    assert set(diamond["steps"][0]) == {"slug", "type", "depends_on", "max_attempts",
                                        "base_delay", "timeout", "start_delay"}
    code, out, _ = pgflow_text(capsys, dsn, "flows")
    assert "d after b, c" in out and "1 started" in out


def test_start_takes_json_or_a_file_and_a_run_id(capsys, client, dsn, tmp_path):
    client.register(diamond_flow())
    code, started = pgflow_json(capsys, dsn, "start", "diamond", "--input", '{"n": 1}')
    assert code == 0 and client.get_run(started["run_id"]).input == {"n": 1}
    (tmp_path / "input.json").write_text('{"n": 2}')
    run_id = str(uuid.uuid4())
    for _ in range(2):  # the same run id twice starts one run
        code, out, _ = pgflow_text(capsys, dsn, "start", "diamond", "--input",
                                   f"@{tmp_path / 'input.json'}", "--run-id", run_id)
        assert (code, out) == (0, f"{run_id}\n")
    assert client.get_run(run_id).input == {"n": 2}
    assert len(client.list_runs(flow="diamond")) == 2


def test_start_refuses_bad_input_and_unknown_flows(capsys, client, dsn):
    client.register(diamond_flow())
    code, out, err = pgflow_text(capsys, dsn, "start", "diamond", "--input", "{n: 1}")
    assert code == 78 and "--input is not JSON" in err
    code, out, err = pgflow_text(capsys, dsn, "start", "no_such_flow")
    assert code == 1 and "no_such_flow" in err and "Traceback" not in err
    assert client.list_runs() == []


def test_start_wait_exits_0_with_the_output_or_1_with_the_error(capsys, client, dsn):
    # No supervisor here: a run already finished is what --wait sees first.
    flow = diamond_flow()
    client.register(flow)
    run_id = str(uuid.uuid4())
    client.start_flow(flow, {"n": 1}, run_id=run_id)
    drain(client, flow)
    code, document = pgflow_json(capsys, dsn, "start", "diamond", "--input", '{"n": 1}',
                                 "--run-id", run_id, "--wait")
    assert code == 0 and document["status"] == "completed" and document["output"] == {"d": 10}
    client.cancel_run(client.start_flow(flow, {"n": 2}, run_id=(other := str(uuid.uuid4()))))
    code, out, _ = pgflow_text(capsys, dsn, "start", "diamond", "--run-id", other, "--wait")
    assert code == 1 and "cancelled" in out


def test_runs_filters_and_json_shape(capsys, client, dsn):
    flow = diamond_flow()
    client.register(flow)
    done = client.start_flow(flow, {"n": 1})
    drain(client, flow)
    waiting = client.start_flow(flow, {"n": 2})
    code, runs = pgflow_json(capsys, dsn, "runs")
    assert code == 0 and [r["run_id"] for r in runs] == [str(waiting), str(done)]
    assert set(runs[0]) == {"run_id", "flow_slug", "status", "error", "failed_step", "started_at",
                            "completed_at", "failed_at", "cancelled_at", "duration_s", "key",
                            "tags"}
    assert runs[1]["duration_s"] > 0 and runs[0]["duration_s"] is None
    assert [r["run_id"] for r in pgflow_json(capsys, dsn, "runs", "--status", "completed")[1]] \
        == [str(done)]
    assert pgflow_json(capsys, dsn, "runs", "--flow", "other")[1] == []
    assert len(pgflow_json(capsys, dsn, "runs", "--limit", "1")[1]) == 1
    assert len(pgflow_json(capsys, dsn, "runs", "--since", "1h")[1]) == 2
    future = (datetime.datetime.now() + datetime.timedelta(hours=1)).isoformat(timespec="seconds")
    assert pgflow_json(capsys, dsn, "runs", "--since", future)[1] == []
    code, out, _ = pgflow_text(capsys, dsn, "runs")
    assert str(done) in out and "completed" in out


def test_run_shows_every_failed_attempt(capsys, client, dsn):
    flow = flaky_flow()
    client.register(flow)
    run_id = client.start_flow(flow, [1, 2])
    drain(client, flow, wait_for_retries=True)
    code, document = pgflow_json(capsys, dsn, "run", str(run_id))
    assert code == 0 and document["status"] == "completed"
    first, each = document["steps"]
    assert (first["step_slug"], first["attempts"], first["status"]) == ("first", 3, "completed")
    assert [e["error"] for e in first["tasks"][0]["errors"]] == [
        "RuntimeError: not yet (attempt 1)", "RuntimeError: not yet (attempt 2)"]
    assert [e["attempt"] for e in first["tasks"][0]["errors"]] == [1, 2]
    assert [t["task_index"] for t in each["tasks"]] == [0, 1]
    assert each["output"] == [1, 2] and document["output"] == {"each": [1, 2]}
    code, out, _ = pgflow_text(capsys, dsn, "run", str(run_id))
    assert "first attempt 1 at" in out and "RuntimeError: not yet (attempt 2)" in out
    code, out, err = pgflow_text(capsys, dsn, "run", str(uuid.uuid4()))
    assert code == 1 and "does not exist" in err


def test_cancel(capsys, client, dsn):
    flow = diamond_flow()
    client.register(flow)
    queued = client.start_flow(flow, {"n": 1})
    assert pgflow_json(capsys, dsn, "cancel", str(queued)) == (
        0, {"run_id": str(queued), "status": "cancelled", "cancelled": True})
    assert client.get_run(queued).steps["a"].status == "cancelled"
    assert pgflow_json(capsys, dsn, "cancel", str(queued))[1]["cancelled"] is False
    done = client.start_flow(flow, {"n": 1})
    drain(client, flow)
    code, out, _ = pgflow_text(capsys, dsn, "cancel", str(done))
    assert code == 1 and out == f"run {done} was already completed; nothing to cancel\n"


def test_workers_live_and_recently_stopped(capsys, conn, dsn):
    live = HandWorker(conn, ["diamond"])
    stopped = HandWorker(conn, ["diamond"])
    conn.execute("select pgflow.stop_worker(%s)", (stopped.worker_id,))
    gone = HandWorker(conn, ["diamond"])  # silent: its last heartbeat is a minute old
    conn.execute("update pgflow.workers set last_heartbeat_at = now() - interval '1 minute' "
                 "where worker_id = %s", (gone.worker_id,))
    old = HandWorker(conn, ["diamond"])
    conn.execute("update pgflow.workers set stopped_at = now() - interval '2 hours' "
                 "where worker_id = %s", (old.worker_id,))
    code, workers = pgflow_json(capsys, dsn, "workers")
    assert code == 0
    states = {w["worker_id"]: w["state"] for w in workers}
    assert states == {str(live.worker_id): "live", str(stopped.worker_id): "stopped",
                      str(gone.worker_id): "silent"}
    assert workers[0]["worker_id"] == str(live.worker_id), "live ones first"
    assert {"hostname", "pid", "flows", "last_heartbeat_at", "tasks_held"} <= set(workers[0])
    code, workers = pgflow_json(capsys, dsn, "workers", "--heartbeat-interval", "30")
    assert {w["state"] for w in workers} == {"live", "stopped"}, "a minute is within 3 x 30 s"


def test_list_runs_validates_its_arguments(client: Client):
    with pytest.raises(ValueError, match="status must be one of started, completed"):
        client.list_runs(status="done")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        client.list_runs(limit=0)
    assert client.list_runs(since=datetime.timedelta(minutes=5)) == []
