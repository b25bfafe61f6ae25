"""How `pgflow top` shows a snapshot, live on a terminal and as lines otherwise."""

from __future__ import annotations

import datetime
import io

import psycopg
from rich.console import Console

from supervisor.commands import top, top_view


def snapshot(**changes) -> top.Snapshot:
    values = dict(
        at=datetime.datetime(2026, 1, 31, 12, 0, 1, tzinfo=datetime.UTC), window_s=300.0,
        sample_runs=1000, attempts_per_second=123.4,
        runs={"started": 3, "completed": 1200, "failed": 2}, runs_finished_last_minute=240,
        queue=[{"flow_slug": "orders", "ready": 7, "delayed": 1, "running": 4,
                "oldest_ready_s": 0.25}],
        slowest_steps=[{"flow_slug": "orders", "step_slug": "ship", "completed": 50,
                        "p50_s": 0.1, "p95_s": 0.5, "max_s": 0.7, "failed_attempts": 2,
                        "failed_tasks": 0}],
        failing_steps=[{"flow_slug": "orders", "step_slug": "charge", "completed": 40,
                        "p50_s": 0.1, "p95_s": 0.2, "max_s": 0.3, "failed_attempts": 9,
                        "failed_tasks": 1}],
        supervisors=[{"worker_id": "w", "hostname": "vm-a", "pid": 42, "flows": ["orders"],
                      "started_at": None, "heartbeat_age_s": 2.0, "executors": 4,
                      "executors_busy": 3, "tasks_buffered": 5, "tasks_held": 8,
                      "attempts_succeeded": 1000, "attempts_failed": 9,
                      "attempts_per_second": 123.4}])
    values.update(changes)
    return top.Snapshot(**values)  # type: ignore[arg-type]


def rendered(snap: top.Snapshot) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(top_view.render(snap))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_live_view_shows_every_section():
    text = rendered(snapshot())
    assert "throughput 123.4 attempts/s from 1 supervisor, 3/4 executors busy" in text
    assert "queue 7 ready (oldest waited 250 ms), 1 delayed, 4 held by supervisors" in text
    assert ("runs (started in the last 5m): 3 started  1,200 completed  2 failed  0 cancelled; "
            "240 finished/min") in text
    assert "orders  ship" in text and "500 ms" in text
    assert "orders  charge" in text and "9" in text
    assert "vm-a" in text and "3/4 busy" in text


def test_an_idle_system_says_so():
    text = rendered(snapshot(attempts_per_second=None, runs={}, queue=[], slowest_steps=[],
                             failing_steps=[], supervisors=[]))
    assert "throughput - attempts/s from 0 supervisors, 0/0 executors busy" in text
    assert "no step finished" in text and "no failed attempts" in text
    assert "no live supervisor" in text


def test_the_line_off_a_terminal():
    line = top_view.line(snapshot())
    assert line.endswith("attempts/s 123.4 | runs 5m: started 3 completed 1200 failed 2 "
                         "cancelled 0 | queue ready 7 delayed 1 held 4 | supervisors 1, "
                         "executors 3/4 busy | slowest orders/ship p95 500 ms | most failing "
                         "orders/charge 9")


def test_follow_redraws_in_place_on_a_terminal_and_stops_after_count():
    calls = []

    def read() -> top.Snapshot:
        calls.append(1)
        return snapshot(attempts_per_second=float(len(calls)))

    out = io.StringIO()
    top.follow(read, 0.01, 3, Console(file=out, force_terminal=True, color_system=None, width=120))
    assert len(calls) == 3
    assert "throughput 3.0 attempts/s" in out.getvalue() and "throughput 1.0" in out.getvalue()
    assert "\x1b[" in out.getvalue(), "redrawn with cursor movements"


def test_follow_keeps_watching_while_the_database_is_unreachable():
    results: list[top.Snapshot | Exception] = [
        snapshot(), psycopg.OperationalError("connection refused"), snapshot()]

    def read() -> top.Snapshot:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    out = io.StringIO()
    top.follow(read, 0.01, 3, Console(file=out, width=250))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "attempts/s 123.4" in lines[2]
    assert lines[1] == "cannot read the database (connection refused); trying again"
