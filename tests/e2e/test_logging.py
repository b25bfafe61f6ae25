"""What the supervisor logs about failed attempts, and the context of handler logs."""

from __future__ import annotations

import json

from pgflow import Client


def test_json_logs_show_each_failed_attempt_and_tag_handler_records(dsn, start_supervisor):
    supervisor = start_supervisor(dsn, "--log-format", "json")
    with Client(dsn) as client:
        run = client.wait(client.start_flow("e2e_fail", {"n": 1}), timeout=20)
    assert run.status == "failed"
    supervisor.wait_for_log("attempt 2 of e2e_fail/always_fails failed")
    records = [json.loads(line) for line in supervisor.log().splitlines()]  # every line is JSON
    failed = [r for r in records if r["message"].startswith("attempt ")]
    assert [(r["level"], r["attempt"], r["step"], r["run_id"]) for r in failed] == [
        ("WARNING", 1, "always_fails", str(run.run_id)),
        ("WARNING", 2, "always_fails", str(run.run_id)),
    ]
    assert "will retry" in failed[0]["message"] and "no attempts left" in failed[1]["message"]
    assert failed[0]["message"].endswith("ValueError: bad input {'n': 1}")
    from_handler = [r for r in records if r["message"] == "about to fail"]
    assert [(r["logger"], r["run_id"], r["flow"], r["step"], r["attempt"]) for r in from_handler] == [
        ("e2e", str(run.run_id), "e2e_fail", "always_fails", attempt) for attempt in (1, 2)]
    assert all(r["pid"] != supervisor.pid for r in from_handler), "logged in the executors"


def test_text_logs_tag_handler_records_with_run_step_and_attempt(dsn, start_supervisor):
    supervisor = start_supervisor(dsn)
    with Client(dsn) as client:
        run = client.wait(client.start_flow("e2e_fail", None), timeout=20)
    supervisor.wait_for_log("attempt 2 of e2e_fail/always_fails failed")
    log = supervisor.log()
    assert (f"WARNING [{supervisor.pid}] pgflow.supervisor: attempt 1 of e2e_fail/always_fails "
            f"failed (run {run.run_id}, task 0; will retry): ValueError: bad input None") in log
    assert (f"e2e: about to fail [run={run.run_id} flow=e2e_fail step=always_fails "
            "attempt=2]") in log
