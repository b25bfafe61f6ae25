"""What `pgflow flows`, `pgflow runs` and `pgflow run` show of conditions,
concurrency limits, schedules, keys and tags."""

from __future__ import annotations

import datetime

import pytest

from executor import drain
from pgflow import Flow
from tests.integration.test_cli_commands import pgflow_json, pgflow_text


def featured_flow() -> Flow:
    flow = Flow("featured", max_concurrency=5, schedule="*/5 * * * *",
                schedule_input={"from": "cron"}, timezone="Europe/Paris")

    @flow.step()
    def kind(input):
        return input.get("kind", "a")

    @flow.step(depends_on=["kind"], if_={"kind": "a"}, max_concurrency=2)
    def only_a(deps):
        return "a"

    @flow.step(depends_on=["kind"], if_not={"kind": "a"}, when_unmet="skip_cascade",
               when_exhausted="skip")
    def not_a(deps):
        return "not a"

    return flow


def test_flows_shows_conditions_limits_and_the_next_tick(capsys, client, dsn):
    client.register(featured_flow())
    code, [flow] = pgflow_json(capsys, dsn, "flows")
    assert code == 0 and flow["max_concurrency"] == 5
    schedule = flow["schedule"]
    assert (schedule["cron"], schedule["timezone"], schedule["input"], schedule["catch_up"]) == (
        "*/5 * * * *", "Europe/Paris", {"from": "cron"}, False)
    next_tick = datetime.datetime.fromisoformat(schedule["next_tick_at"])
    now = datetime.datetime.now(datetime.UTC)
    assert now < next_tick <= now + datetime.timedelta(minutes=5)
    assert next_tick.minute % 5 == 0 and next_tick.second == 0
    kind, only_a, not_a = flow["steps"]
    assert "if" not in kind and "max_concurrency" not in kind
    assert (only_a["if"], only_a["max_concurrency"]) == ({"kind": "a"}, 2)
    assert (not_a["if_not"], not_a["when_unmet"], not_a["when_exhausted"]) == (
        {"kind": "a"}, "skip_cascade", "skip")

    code, out, _ = pgflow_text(capsys, dsn, "flows")
    assert 'only_a after kind if {"kind": "a"} (max_concurrency=2)' in out
    assert 'not_a after kind unless {"kind": "a"} (when_unmet=skip_cascade, when_exhausted=skip)' \
        in out
    assert "at most 5 at once" in out
    assert "*/5 * * * * (Europe/Paris)" in out and "next 20" in out


def test_runs_shows_and_filters_tags(capsys, client, dsn):
    flow = featured_flow()
    client.register(flow)
    acme = client.start_flow(flow, {}, key="order-1", tags={"tenant": "acme"})
    client.start_flow(flow, {}, tags={"tenant": "globex"})
    code, runs = pgflow_json(capsys, dsn, "runs", "--tag", "tenant=acme")
    assert code == 0 and [r["run_id"] for r in runs] == [str(acme)]
    assert (runs[0]["key"], runs[0]["tags"]) == ("order-1", {"tenant": "acme"})
    code, out, _ = pgflow_text(capsys, dsn, "runs")
    assert "key=order-1 tenant=acme" in out and "tenant=globex" in out
    with pytest.raises(SystemExit) as usage_error:
        pgflow_text(capsys, dsn, "runs", "--tag", "tenant")
    assert usage_error.value.code == 2
    assert "write it as name=value" in capsys.readouterr().err


def test_run_shows_key_tags_and_why_steps_were_skipped(capsys, client, dsn):
    flow = featured_flow()
    client.register(flow)
    run_id = client.start_flow(flow, {"kind": "a"}, key="k", tags={"tenant": "acme"})
    drain(client, flow)
    code, document = pgflow_json(capsys, dsn, "run", str(run_id))
    assert (document["key"], document["tags"]) == ("k", {"tenant": "acme"})
    not_a = document["steps"][2]
    assert (not_a["status"], not_a["skip_reason"]) == ("skipped", "condition_unmet")
    assert not_a["skipped_at"] is not None
    code, out, _ = pgflow_text(capsys, dsn, "run", str(run_id))
    assert "tags: key k, tenant=acme" in out
    assert "skipped (condition_unmet)" in out
