"""Issue 12's features through real `pgflow supervise` processes: conditions,
concurrency limits, schedules, keys and tags, handlers without ctx."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

from pgflow import Client
from tests.e2e.conftest import APP, query
from tests.e2e.test_cli_errors import pgflow

FEATURES = "e2e_features"


def max_overlap(directory: Path) -> tuple[int, int]:
    """(intervals recorded, most of them running at one moment)."""
    events = []
    for path in directory.glob("*.txt"):
        start, end = map(float, path.read_text().split())
        events += [(start, 1), (end, -1)]
    running = most = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        most = max(most, running)
    return len(events) // 2, most


def test_conditions_skip_cascade_and_exhausted_steps(dsn, start_supervisor):
    start_supervisor(dsn, flows=FEATURES)
    with Client(dsn) as client:
        ids = {kind: client.start_flow("e2e_routed", {"kind": kind}) for kind in ("a", "b", "boom")}
        runs = {kind: client.wait(run_id, timeout=30) for kind, run_id in ids.items()}
        strict = client.wait(client.start_flow("e2e_strict", {"allowed": False}), timeout=10)
    assert runs["a"].output == {"summary": ["fragile", "only_a"]}
    assert runs["b"].output == {"after_not_a": "not a, attempt 1, then more",
                                "summary": ["fragile"]}
    assert runs["boom"].output == {"after_not_a": "not a, attempt 1, then more", "summary": []}
    assert all(run.status == "completed" for run in runs.values())
    reasons = {kind: {slug: s.skip_reason for slug, s in run.steps.items() if s.skip_reason}
               for kind, run in runs.items()}
    assert reasons == {
        "a": {"not_a": "condition_unmet", "after_not_a": "dependency_skipped"},
        "b": {"only_a": "condition_unmet"},
        "boom": {"only_a": "condition_unmet", "fragile": "handler_failed"},
    }
    assert runs["boom"].steps["fragile"].attempts == 2
    assert runs["boom"].steps["fragile"].error == "RuntimeError: fragile broke"
    assert (strict.status, strict.failed_step) == ("failed", "guarded")
    assert "condition not met" in strict.error


def test_a_flow_limit_holds_across_two_supervisors(dsn, start_supervisor, tmp_path):
    first = start_supervisor(dsn, flows=FEATURES, processes=2, wait=False)
    second = start_supervisor(dsn, flows=FEATURES, processes=2, wait=False)
    first.wait_ready()
    second.wait_ready()
    with Client(dsn) as client:
        run_ids = client.start_flows("e2e_limited", [{"dir": str(tmp_path), "seconds": 0.3}] * 8)
        assert {client.wait(r, timeout=30).status for r in run_ids} == {"completed"}
    ran, most = max_overlap(tmp_path)
    assert (ran, most) == (8, 2), "4 executors, never more than 2 at once (but 2 did happen)"


def test_a_step_limit_of_one_is_strictly_serial(dsn, start_supervisor, tmp_path):
    start_supervisor(dsn, flows=FEATURES, processes=3)
    with Client(dsn) as client:
        run = client.wait(client.start_flow(
            "e2e_serial", [{"dir": str(tmp_path), "seconds": 0.15}] * 6), timeout=30)
    assert run.status == "completed" and run.output["one_at_a_time"] == ["done"] * 6
    assert max_overlap(tmp_path) == (6, 1)


def minute_ticks(after: datetime.datetime, until: datetime.datetime) -> list[str]:
    tick = after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    out = []
    while tick <= until:
        out.append(tick.strftime("%Y-%m-%dT%H:%M:%SZ"))
        tick += datetime.timedelta(minutes=1)
    return out


def test_schedules_start_one_run_per_tick_and_catch_up_only_when_asked(dsn, start_supervisor):
    sys.path.insert(0, str(APP))
    try:
        import e2e_features
    finally:
        sys.path.remove(str(APP))
    with Client(dsn) as client:
        client.migrate()
        for flow in (e2e_features.every_minute, e2e_features.catching_up):
            client.register(flow)
    # As if no supervisor had run for five minutes.
    watermark = query(dsn, "update pgflow.schedules set last_tick_at = now() - interval '5 min' "
                           "returning last_tick_at")[0][0]
    started = datetime.datetime.now(datetime.UTC)
    first = start_supervisor(dsn, flows=FEATURES, processes=1, wait=False)
    second = start_supervisor(dsn, flows=FEATURES, processes=1, wait=False)
    first.wait_ready()
    second.wait_ready()

    def runs(flow: str) -> list[tuple[str, str]]:
        return query(dsn, "select tags ->> 'scheduled_for', status from pgflow.runs "
                          "where flow_slug = %s order by 1", flow)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = [r for flow in ("e2e_every_minute", "e2e_catching_up") for r in runs(flow)
                if r[1] == "completed"]
        if len(done) >= 6:
            break
        time.sleep(0.2)
    missed = minute_ticks(watermark, started)
    caught_up = [tick for tick, _ in runs("e2e_catching_up")]
    assert caught_up[:len(missed)] == missed, "every missed tick, once each"
    assert caught_up == minute_ticks(watermark, datetime.datetime.fromisoformat(caught_up[-1]))
    latest = [tick for tick, _ in runs("e2e_every_minute")]
    # Without catch_up only the latest missed tick runs (or, if a minute
    # turned before the supervisors first looked, the new one).
    assert latest[0] in (missed[-1], minute_ticks(started, started + datetime.timedelta(
        minutes=1))[0]), latest
    assert len(latest) <= 2, latest
    assert query(dsn, "select output from pgflow.runs where flow_slug = 'e2e_every_minute' "
                      "limit 1")[0][0] == {"on_tick": {"from": "cron"}}
    logs = first.log() + second.log()
    assert "runs on schedule '* * * * *' (UTC; Every minute" in logs


def test_keys_and_tags_through_a_supervisor_and_the_command_line(dsn, start_supervisor):
    start_supervisor(dsn, flows=FEATURES)
    with Client(dsn) as client:
        first = client.start_flow("e2e_keyed", {"seconds": 1}, key="order-42",
                                  tags={"tenant": "acme"})
        assert client.start_flow("e2e_keyed", {"seconds": 0}, key="order-42") == first
        assert client.wait(first, timeout=20).output == {"slow_echo": {"seconds": 1}}
        second = client.start_flow("e2e_keyed", {"seconds": 0}, key="order-42")
        assert second != first
        assert client.wait(second, timeout=20).status == "completed"
    listed = pgflow("runs", "--tag", "tenant=acme", "--json", "--database-url", dsn)
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["key"], r["tags"]) for r in json.loads(listed.stdout)] == [
        (str(first), "order-42", {"tenant": "acme"})]


def test_flows_shows_the_next_tick_of_a_served_schedule(dsn, start_supervisor):
    start_supervisor(dsn, flows=FEATURES)
    shown = pgflow("flows", "--json", "--database-url", dsn)
    flows = {f["flow_slug"]: f for f in json.loads(shown.stdout)}
    next_tick = datetime.datetime.fromisoformat(flows["e2e_every_minute"]["schedule"]["next_tick_at"])
    assert 0 < (next_tick - datetime.datetime.now(datetime.UTC)).total_seconds() <= 60
    assert flows["e2e_limited"]["max_concurrency"] == 2
    assert flows["e2e_serial"]["steps"][0]["max_concurrency"] == 1
