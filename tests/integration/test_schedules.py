"""Schedules in the engine: registration stores them, start_due_ticks starts
one run per tick whoever asks, and only the registered schedule counts."""

from __future__ import annotations

import datetime
from typing import Any

import orjson
import psycopg
import pytest

from pgflow import Flow, db
from tests.integration.helpers import count

UTC = datetime.UTC


def hourly(catch_up: bool = False, cron: str = "0 * * * *", **options: Any) -> Flow:
    flow = Flow("hourly", schedule=cron, schedule_input={"report": True}, catch_up=catch_up,
                **options)

    @flow.step()
    def report(input):
        return input

    return flow


def ticks(conn: psycopg.Connection, *times: datetime.datetime,
          cron: str = "0 * * * *", timezone: str = "UTC") -> list[tuple[Any, ...]]:
    items = [{"flow": "hourly", "cron": cron, "timezone": timezone,
              "ticks": [t.isoformat() for t in times]}]
    return conn.execute("select flow_slug, last_tick_at, started, error "
                        "from pgflow.start_due_ticks(%s::jsonb)",
                        (orjson.dumps(items).decode(),)).fetchall()


def set_watermark(conn: psycopg.Connection, when: datetime.datetime) -> None:
    conn.execute("update pgflow.schedules set last_tick_at = %s", (when,))


def hours_ago(n: int) -> datetime.datetime:
    now = datetime.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - datetime.timedelta(hours=n)


def test_registration_stores_the_schedule_with_its_watermark_at_now(client, conn):
    assert client.register(hourly()) == "created"
    row = conn.execute("select cron, timezone, input, catch_up, now() - last_tick_at "
                       "from pgflow.schedules").fetchone()
    assert row[:4] == ("0 * * * *", "UTC", {"report": True}, False)
    assert row[4] < datetime.timedelta(seconds=5)
    assert client.register(hourly()) == "verified"
    assert client.register(hourly(catch_up=True)) == "updated"


def test_each_tick_starts_one_run_however_often_it_is_asked_for(client, conn):
    client.register(hourly())
    set_watermark(conn, hours_ago(2))
    tick = hours_ago(1)
    assert ticks(conn, tick) == [("hourly", tick, 1, None)]
    assert ticks(conn, tick) == [("hourly", tick, 0, None)]
    run = conn.execute("select run_id, input, tags from pgflow.runs").fetchall()
    assert len(run) == 1
    assert run[0][1:] == ({"report": True},
                          {"scheduled_for": tick.strftime("%Y-%m-%dT%H:%M:%SZ")})
    # The run id is derived from flow and tick: even a watermark moved back
    # (by hand) cannot start the same tick twice.
    set_watermark(conn, hours_ago(2))
    assert ticks(conn, tick) == [("hourly", tick, 1, None)]
    assert count(conn, "select count(*) from pgflow.runs") == 1


def test_two_supervisors_asking_at_once_start_one_run(client, conn, dsn):
    client.register(hourly())
    set_watermark(conn, hours_ago(2))
    tick = hours_ago(1)
    with db.connect(dsn, "other supervisor") as other:
        with conn.transaction():
            assert ticks(conn, tick)[0][2] == 1
            other.execute("set lock_timeout = '200ms'")
            assert ticks(other, tick)[0][2] == 0  # skipped: being served
        assert ticks(other, tick)[0][2] == 0  # done already
    assert count(conn, "select count(*) from pgflow.runs") == 1


def test_without_catch_up_only_the_latest_due_tick_runs(client, conn):
    client.register(hourly())
    set_watermark(conn, hours_ago(5))
    assert ticks(conn, hours_ago(3), hours_ago(2), hours_ago(1)) == [
        ("hourly", hours_ago(1), 1, None)]
    assert count(conn, "select count(*) from pgflow.runs") == 1


def test_with_catch_up_every_missed_tick_runs(client, conn):
    client.register(hourly(catch_up=True))
    set_watermark(conn, hours_ago(5))
    assert ticks(conn, hours_ago(3), hours_ago(2), hours_ago(1))[0][2] == 3
    assert count(conn, "select count(*) from pgflow.runs") == 3


def test_ticks_in_the_future_or_before_the_watermark_start_nothing(client, conn):
    client.register(hourly())
    watermark = conn.execute("select last_tick_at from pgflow.schedules").fetchone()[0]
    future = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    assert ticks(conn, future, hours_ago(3)) == [("hourly", watermark, 0, None)]
    assert count(conn, "select count(*) from pgflow.runs") == 0


def test_only_the_registered_schedule_starts_runs(client, conn):
    client.register(hourly())
    set_watermark(conn, hours_ago(2))
    assert ticks(conn, hours_ago(1), cron="*/5 * * * *") == [("hourly", None, 0, None)]
    assert ticks(conn, hours_ago(1), timezone="Europe/Paris") == [("hourly", None, 0, None)]
    plain = Flow("hourly")
    plain.step(slug="report")(lambda input: input)
    assert client.register(plain) == "updated"
    assert count(conn, "select count(*) from pgflow.schedules") == 0
    assert ticks(conn, hours_ago(1)) == [("hourly", None, 0, None)]
    assert count(conn, "select count(*) from pgflow.runs") == 0


def test_a_tick_whose_run_cannot_start_is_reported_and_done(client, conn):
    client.register(hourly())
    set_watermark(conn, hours_ago(2))
    conn.execute("""update pgflow.schedules set input = '"not an object"'""")
    conn.execute("update pgflow.steps set step_type = 'map'")  # a root map: needs an array
    [(flow, last, started, error)] = ticks(conn, hours_ago(1))
    assert (last, started) == (hours_ago(1), 0)
    assert "root map step 'report' needs a JSON array" in error


@pytest.mark.parametrize("field, value", [("cron", "*/5 * * * *"),
                                          ("timezone", "Europe/Paris")])
def test_a_changed_schedule_keeps_its_watermark(client, conn, field, value):
    client.register(hourly())
    set_watermark(conn, hours_ago(2))
    options = {"cron": value} if field == "cron" else {"timezone": value}
    assert client.register(hourly(**options)) == "updated"
    assert conn.execute("select last_tick_at from pgflow.schedules").fetchone()[0] == hours_ago(2)
