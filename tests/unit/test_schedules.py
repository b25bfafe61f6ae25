"""Cron schedules: tick times (pgflow.schedule) and which ticks a supervisor
hands to the engine (supervisor.schedules), without a database."""

from __future__ import annotations

import collections
import datetime
import logging
import time

import pytest

from pgflow import Flow, FlowDefinitionError
from pgflow.schedule import Schedule
from supervisor.answers import PendingAnswers
from supervisor.metrics import Metrics
from supervisor.pgconn import Rows
from supervisor.rounds import Rounds
from supervisor.schedules import RECHECK, Scheduler, TickResult
from supervisor.settings import Settings

UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def scheduled(cron: str = "0 * * * *", **options: object) -> Flow:
    flow = Flow("hourly", schedule=cron, **options)  # type: ignore[arg-type]

    @flow.step()
    def tick(input):
        return input

    return flow


def test_ticks_are_cron_times_in_the_schedules_time_zone():
    paris = Schedule("0 9 * * *", timezone="Europe/Paris")
    assert paris.next_after(at("2025-01-10 12:00")) == at("2025-01-11 08:00")  # CET
    assert paris.next_after(at("2025-07-10 12:00")) == at("2025-07-11 07:00")  # CEST
    every5 = Schedule("*/5 * * * *")
    assert every5.ticks(at("2025-01-01 12:00"), at("2025-01-01 12:16"), 10) == [
        at("2025-01-01 12:05"), at("2025-01-01 12:10"), at("2025-01-01 12:15")]
    assert every5.latest(at("2025-01-01 12:15")) == at("2025-01-01 12:15")
    assert every5.latest(at("2025-01-01 12:14:59")) == at("2025-01-01 12:10")


@pytest.mark.parametrize("options, problem", [
    ({"schedule": "* * * *"}, "has 4 fields; give five"),
    ({"schedule": "61 * * * *"}, "not a valid cron expression: Bad minute"),
    ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "not a known IANA time zone"),
    ({"schedule": "* * * * *", "schedule_input": {1, 2}}, "schedule_input must be a JSON"),
    ({"schedule_input": {}}, "need schedule="),
])
def test_bad_schedules_are_refused_naming_the_flow(options, problem):
    with pytest.raises(FlowDefinitionError, match=rf"Flow 'f': .*{problem}"):
        Flow("f", **options)  # type: ignore[arg-type]


def test_a_root_map_needs_a_list_as_schedule_input():
    flow = Flow("f", schedule="* * * * *", schedule_input={"not": "a list"})

    @flow.map()
    def each(item):
        return item

    with pytest.raises(FlowDefinitionError, match=r"step 'each'.*schedule_input must be a list"):
        flow.validate()


def test_the_schedule_is_an_option_not_the_shape():
    flow = scheduled(schedule_input={"n": 1}, timezone="Europe/Paris", catch_up=True)
    assert flow.options()["schedule"] == {"cron": "0 * * * *", "timezone": "Europe/Paris",
                                          "input": {"n": 1}, "catch_up": True}
    assert flow.shape() == scheduled().shape()
    assert Flow("plain").options()["schedule"] is None


def test_the_watermark_is_asked_for_first_then_only_due_ticks_are_sent():
    scheduler = Scheduler({"hourly": scheduled()})
    now = at("2025-01-01 12:30")
    assert scheduler.due(now) == [
        {"flow": "hourly", "cron": "0 * * * *", "timezone": "UTC", "ticks": []}]
    assert scheduler.next_check(now) == now
    scheduler.on_result([TickResult("hourly", at("2025-01-01 12:29"), 0, None)], now)
    assert scheduler.due(now) == []
    assert scheduler.next_check(now) == now + RECHECK
    assert scheduler.next_check(at("2025-01-01 12:59:30")) == at("2025-01-01 13:00")
    later = at("2025-01-01 13:00:01")
    assert scheduler.due(later)[0]["ticks"] == ["2025-01-01T13:00:00+00:00"]
    scheduler.on_result([TickResult("hourly", at("2025-01-01 13:00"), 1, None)], later)
    assert scheduler.due(later) == []


def test_after_downtime_only_the_latest_tick_unless_catching_up():
    now = at("2025-01-01 12:30")
    watermark = [TickResult("hourly", at("2025-01-01 09:00"), 0, None)]
    plain, catching_up = Scheduler({"hourly": scheduled()}), Scheduler(
        {"hourly": scheduled(catch_up=True)})
    for scheduler in (plain, catching_up):
        scheduler.on_result(watermark, now)
    assert plain.due(now)[0]["ticks"] == ["2025-01-01T12:00:00+00:00"]
    assert catching_up.due(now)[0]["ticks"] == [
        "2025-01-01T10:00:00+00:00", "2025-01-01T11:00:00+00:00", "2025-01-01T12:00:00+00:00"]
    catching_up.on_result([TickResult("hourly", at("2024-12-01 00:00"), 0, None)], now)
    assert len(catching_up.due(now)[0]["ticks"]) == 100


def test_a_schedule_registered_differently_elsewhere_is_left_alone(caplog):
    scheduler = Scheduler({"hourly": scheduled()})
    now = at("2025-01-01 12:30")
    with caplog.at_level(logging.WARNING, logger="pgflow.supervisor"):
        scheduler.on_result([TickResult("hourly", None, 0, None)], now)
    assert "the registered schedule is not '0 * * * *'" in caplog.text
    assert scheduler.due(now) == []
    assert scheduler.next_check(now) == now + RECHECK
    assert scheduler.due(now + RECHECK)[0]["ticks"] == []


def test_checks_are_never_further_apart_than_the_recheck_interval():
    scheduler = Scheduler({"yearly": scheduled("0 0 1 1 *")})
    now = at("2025-03-01 00:00")
    scheduler.on_result([TickResult("yearly", at("2025-01-01 00:00"), 1, None)], now)
    assert scheduler.next_check(now) == now + RECHECK
    assert not Scheduler({"plain": Flow("plain")})


def test_the_supervisors_rounds_ask_for_due_ticks_and_arm_the_next_check(monkeypatch):
    monkeypatch.setenv("PGFLOW_DATABASE_URL", "postgresql://x/y")
    monkeypatch.setenv("PGFLOW_FLOWS", "app.flows")
    metrics = Metrics()
    flow = scheduled()
    rounds = Rounds(Settings(), ["hourly"], metrics, collections.deque(), list,
                    scheduler=Scheduler({"hourly": flow}))
    answers = PendingAnswers(metrics, 10)
    assert rounds.next_round(answers, 0, collections.deque()) == []

    rounds.schedules_due = True
    assert rounds.has_work(answers, 0)
    [transaction] = rounds.next_round(answers, 0, collections.deque())
    [statement] = transaction.statements
    assert b"start_due_ticks" in statement.sql
    watermark = datetime.datetime.now(UTC) - datetime.timedelta(minutes=1)
    statement.on_result(Rows(("flow_slug", "last_tick_at", "started", "error"),
                             [(b"hourly", str(watermark.timestamp()).encode(), b"0", None)]))
    wait = rounds.next_schedule_at - time.monotonic()
    expected = (flow.schedule.next_after(watermark) - datetime.datetime.now(UTC)).total_seconds()
    assert 0.19 <= wait <= max(expected, 0.2) + 0.1
    assert rounds.has_work(answers, 0), "the loop arms its timer before sleeping"
