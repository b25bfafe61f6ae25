"""`pgflow retry`, `prune`, `top`, and what `run` and `workers` show of
attempts' errors and supervisors' reports: output, --json shape, exit codes."""

from __future__ import annotations

import datetime
import uuid

import pytest

from executor import drain
from pgflow import Flow
from supervisor.cli import main
from tests.integration.helpers import HandWorker, diamond_flow
from tests.integration.test_cli_commands import pgflow_json, pgflow_text


def broken_flow(state: dict[str, bool]) -> Flow:
    flow = Flow("broken", max_attempts=2, base_delay=0)

    @flow.step()
    def load(input, ctx):
        return input

    @flow.step(depends_on=["load"])
    def parse(deps, ctx):
        if state["broken"]:
            return deps["load"]["numbers"]  # KeyError while broken
        return sum(deps["load"]["values"])

    return flow


def failed_run(client, state):
    flow = broken_flow(state)
    client.register(flow)
    run_id = client.start_flow(flow, {"values": [1, 2]})
    drain(client, flow, wait_for_retries=True)
    assert client.get_run(run_id).status == "failed"
    return flow, run_id


def test_retry_resumes_a_failed_run(capsys, client, dsn):
    state = {"broken": True}
    flow, run_id = failed_run(client, state)
    state["broken"] = False
    code, document = pgflow_json(capsys, dsn, "retry", str(run_id))
    assert code == 0
    assert document == {"run_id": str(run_id), "flow_slug": "broken", "status": "started",
                        "retry_count": 1, "steps": ["parse"], "error": None}
    drain(client, flow)
    assert client.get_run(run_id).output == {"parse": 3}
    code, out, err = pgflow_text(capsys, dsn, "retry", str(run_id))
    assert code == 1 and out == ""
    assert err == (f"pgflow retry: Run {run_id} of flow 'broken' completed; there is nothing to "
                   "retry. Start a new run with the same input to run it again.\n")


def test_retry_text_and_refusals(capsys, client, dsn):
    state = {"broken": True}
    _, run_id = failed_run(client, state)
    code, out, _ = pgflow_text(capsys, dsn, "retry", str(run_id))
    assert (code, out) == (0, f"run {run_id} (broken) started again (retry 1); runs again: parse\n")
    code, out, err = pgflow_text(capsys, dsn, "retry", str(run_id))
    assert code == 1 and "is still running (started)" in err and "cancel it first" in err
    code, out, err = pgflow_text(capsys, dsn, "retry", str(uuid.uuid4()))
    assert code == 1 and "does not exist" in err and "Traceback" not in err
    code, out, err = pgflow_text(capsys, dsn, "retry", "not-a-uuid")
    assert code == 1 and "is not a UUID" in err


def test_a_retry_that_fails_again_at_once_exits_1(capsys, client, dsn):
    flow = Flow("unmappable")

    @flow.step()
    def produce(input, ctx):
        return input

    @flow.map(array="produce")
    def each(item, ctx):
        return item

    client.register(flow)
    run_id = client.start_flow(flow, {"not": "a list"})
    drain(client, flow)
    code, out, _ = pgflow_text(capsys, dsn, "retry", str(run_id))
    assert code == 1
    assert out.startswith(f"run {run_id} (unmappable) was retried and is failed again at once "
                          "(step each): Map step 'each'")


def test_run_shows_each_attempts_type_message_and_traceback(capsys, client, dsn):
    state = {"broken": True}
    _, run_id = failed_run(client, state)
    state["broken"] = False
    client.retry_run(run_id)
    code, out, _ = pgflow_text(capsys, dsn, "run", str(run_id))
    assert code == 0
    assert "retried 1 time, last at" in out
    assert "parse attempt 1 at " in out and "(before retry 1): KeyError: 'numbers'" in out
    assert "Traceback (most recent call last):" in out
    assert 'return deps["load"]["numbers"]' in out, "the line that raised"
    assert out.count("(same traceback as parse attempt 1)") == 1
    code, document = pgflow_json(capsys, dsn, "run", str(run_id))
    assert document["retry_count"] == 1 and document["retried_at"]
    parse = next(s for s in document["steps"] if s["step_slug"] == "parse")
    errors = parse["tasks"][0]["errors"]
    assert [(e["attempt"], e["type"], e["retry"]) for e in errors] == [
        (1, "KeyError", 0), (2, "KeyError", 0)]
    assert set(errors[0]) == {"attempt", "error", "at", "type", "traceback", "retry"}


def finished(client, n: int) -> list[uuid.UUID]:
    flow = diamond_flow()
    client.register(flow)
    ids = client.start_flows(flow, [{"n": i} for i in range(n)])
    drain(client, flow)
    return ids


def test_prune_dry_run_then_prune(capsys, client, conn, dsn):
    ids = finished(client, 5)
    conn.execute("update pgflow.runs set started_at = started_at - interval '8 days', "
                 "completed_at = completed_at - interval '8 days' where run_id = any (%s)",
                 (ids[:3],))
    code, dry = pgflow_json(capsys, dsn, "prune", "--older-than", "7d", "--dry-run")
    assert code == 0
    assert set(dry) == {"cutoff", "runs", "tasks", "batches", "dry_run", "seconds",
                        "longest_batch_seconds", "older_than_s"}
    assert (dry["runs"], dry["tasks"], dry["dry_run"], dry["older_than_s"]) == (
        3, 12, True, 7 * 86400)
    datetime.datetime.fromisoformat(dry["cutoff"])
    code, out, _ = pgflow_text(capsys, dsn, "prune", "--older-than", "7d", "--dry-run")
    assert out.startswith("would prune 3 runs (12 tasks) that finished before ")
    code, out, _ = pgflow_text(capsys, dsn, "prune", "--older-than", "7d", "--batch-size", "2")
    assert code == 0 and out.startswith("pruned 3 runs (12 tasks) that finished before ")
    assert "in 2 batches of up to 2 runs" in out
    assert {r.run_id for r in client.list_runs()} == set(ids[3:])
    code, document = pgflow_json(capsys, dsn, "prune", "--older-than", "7d")
    assert (document["runs"], document["batches"]) == (0, 1)
    code, out, _ = pgflow_text(capsys, dsn, "prune", "--older-than", "7d")
    assert out.startswith("nothing to prune: no run finished before ")


@pytest.mark.parametrize("args", [[], ["--older-than", "7 days"], ["--older-than", "7d",
                                                                     "--batch-size", "0"]])
def test_prune_refuses_bad_options(capsys, dsn, args):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", *args, "--database-url", dsn])
    assert exit_info.value.code == 2
    assert "usage: pgflow prune" in capsys.readouterr().err


def test_top_json_snapshot(capsys, client, conn, dsn):
    state = {"broken": True}
    failed_run(client, state)
    ids = finished(client, 3)
    queued = client.start_flow("diamond", {"n": 9})
    worker = HandWorker(conn, ["diamond"])
    worker.claim_one()
    conn.execute("update pgflow.workers set started_at = now() - interval '2 seconds'")
    conn.execute("select pgflow.report_worker(%s, 4, 1, 2, 10, 1)", (worker.worker_id,))
    code, snap = pgflow_json(capsys, dsn, "top")
    assert code == 0
    assert set(snap) == {"at", "window_s", "sample_runs", "attempts_per_second", "runs",
                         "runs_finished_last_minute", "queue", "slowest_steps", "failing_steps",
                         "supervisors"}
    assert snap["runs"] == {"completed": 3, "failed": 1, "started": 1}
    assert snap["runs_finished_last_minute"] == 4
    assert snap["queue"] == [{"flow_slug": "diamond", "ready": 0, "delayed": 0, "running": 1,
                              "oldest_ready_s": 0}]
    assert snap["failing_steps"][0] | {"p50_s": None, "p95_s": None, "max_s": None} == {
        "flow_slug": "broken", "step_slug": "parse", "completed": 0, "failed_attempts": 2,
        "failed_tasks": 1, "p50_s": None, "p95_s": None, "max_s": None}
    assert {(s["flow_slug"], s["step_slug"]) for s in snap["slowest_steps"]} >= {
        ("diamond", "a"), ("diamond", "d")}
    assert set(snap["slowest_steps"][0]) == {"flow_slug", "step_slug", "completed", "p50_s",
                                             "p95_s", "max_s", "failed_attempts", "failed_tasks"}
    (supervisor,) = snap["supervisors"]
    assert (supervisor["executors"], supervisor["executors_busy"], supervisor["tasks_buffered"],
            supervisor["tasks_held"], supervisor["attempts_succeeded"]) == (4, 1, 2, 1, 10)
    assert snap["attempts_per_second"] == pytest.approx(11 / 2, rel=0.1), "since it started"
    assert queued and ids


def test_top_prints_a_line_per_refresh_off_a_terminal(capsys, client, dsn):
    finished(client, 2)
    code, out, _ = pgflow_text(capsys, dsn, "top", "--count", "2", "--interval", "0.05")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert "| runs 5m: started 0 completed 2 failed 0 cancelled 0 |" in lines[0]
    assert "supervisors 0, executors 0/0 busy" in lines[0] and "slowest diamond/" in lines[0]


def test_workers_show_what_supervisors_report(capsys, conn, dsn):
    worker = HandWorker(conn, ["diamond"])
    conn.execute("select pgflow.report_worker(%s, 2, 1, 0, 5, 0)", (worker.worker_id,))
    conn.execute("update pgflow.workers set stats_at = now() - interval '2 seconds'")
    conn.execute("select pgflow.report_worker(%s, 2, 2, 3, 25, 1)", (worker.worker_id,))
    code, (row,) = pgflow_json(capsys, dsn, "workers")
    assert (row["executors"], row["executors_busy"], row["tasks_buffered"],
            row["attempts_succeeded"], row["attempts_failed"]) == (2, 2, 3, 25, 1)
    assert row["attempts_per_second"] == pytest.approx(21 / 2, rel=0.1)
    code, out, _ = pgflow_text(capsys, dsn, "workers")
    assert "2/2 busy" in out and "10.5" in out



def test_new_commands_on_a_database_without_the_schema_say_run_migrate(capsys, empty_dsn):
    for command in (["top"], ["prune", "--older-than", "7d"], ["retry", str(uuid.uuid4())]):
        code, out, err = pgflow_text(capsys, empty_dsn, *command)
        assert code == 78 and out == ""
        assert err.endswith("has no pgflow schema: run `pgflow migrate`\n")
