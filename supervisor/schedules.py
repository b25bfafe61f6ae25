"""Which schedule ticks to hand to the engine, and when to look again.

Pure: the supervisor's loop asks `due(now)` when its "schedules" timer
fires, sends the result to `pgflow.start_due_ticks` (which starts each tick
once, whichever supervisors ask) and gives the rows back to `on_result`.
The watermark of each flow (the last tick done) lives in the database;
this keeps the last one it reported, so a tick is asked for once it is due
and not again after the engine says it is done.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgflow import Flow
from pgflow.schedule import Schedule

log = logging.getLogger("pgflow.supervisor")

# Ticks sent per flow and call when catching up; the rest follow at once.
MAX_TICKS_PER_CALL = 100
# Look again at least this often: the wall clock may jump, and another
# version of the code may register another schedule.
RECHECK = datetime.timedelta(seconds=60)


@dataclass
class TickResult:
    flow_slug: str
    last_tick_at: datetime.datetime | None  # None: not this schedule in the database
    started: int
    error: str | None


class Scheduler:
    def __init__(self, flows: Mapping[str, Flow]) -> None:
        self._schedules: dict[str, Schedule] = {
            slug: flow.schedule for slug, flow in flows.items() if flow.schedule is not None}
        self._watermarks: dict[str, datetime.datetime] = {}
        # Flows whose registered schedule is another (newer code registered
        # it): asked about again only at the recheck interval.
        self._elsewhere: dict[str, datetime.datetime] = {}

    def __bool__(self) -> bool:
        return bool(self._schedules)

    @property
    def flows(self) -> list[str]:
        return list(self._schedules)

    def due(self, now: datetime.datetime) -> list[dict[str, Any]]:
        """What to hand to start_due_ticks now: each flow with due ticks (or
        whose watermark is not known yet), with its cron expression so the
        engine can refuse a schedule that is no longer the registered one."""
        items = []
        for slug, schedule in self._schedules.items():
            if slug in self._elsewhere and now < self._elsewhere[slug]:
                continue
            watermark = self._watermarks.get(slug)
            ticks = [] if watermark is None else self._ticks(schedule, watermark, now)
            if watermark is None or ticks:
                items.append({"flow": slug, "cron": schedule.cron, "timezone": schedule.timezone,
                              "ticks": [t.isoformat() for t in ticks]})
        return items

    @staticmethod
    def _ticks(schedule: Schedule, watermark: datetime.datetime,
               now: datetime.datetime) -> list[datetime.datetime]:
        if schedule.catch_up:
            return schedule.ticks(watermark, now, MAX_TICKS_PER_CALL)
        latest = schedule.latest(now)
        return [latest] if latest is not None and latest > watermark else []

    def on_result(self, rows: Sequence[TickResult], now: datetime.datetime) -> None:
        for row in rows:
            schedule = self._schedules.get(row.flow_slug)
            if schedule is None:
                continue
            if row.last_tick_at is None:
                if row.flow_slug not in self._elsewhere:
                    log.warning("flow %r: the registered schedule is not %r (%s) any more; this "
                                "supervisor starts no scheduled runs of it until it is",
                                row.flow_slug, schedule.cron, schedule.timezone)
                self._elsewhere[row.flow_slug] = now + RECHECK
                self._watermarks.pop(row.flow_slug, None)
                continue
            if self._elsewhere.pop(row.flow_slug, None) is not None:
                log.info("flow %r: schedule %r is registered again", row.flow_slug, schedule.cron)
            self._watermarks[row.flow_slug] = row.last_tick_at
            if row.error:
                log.warning("flow %r: could not start the scheduled run for %s: %s",
                            row.flow_slug, row.last_tick_at.isoformat(), row.error)
            elif row.started:
                log.info("flow %r: started %d scheduled run%s (latest for %s)", row.flow_slug,
                         row.started, "" if row.started == 1 else "s",
                         row.last_tick_at.isoformat())

    def next_check(self, now: datetime.datetime) -> datetime.datetime:
        """When `due` may next have something: the earliest next tick (now when
        one is due already, or a watermark is unknown), at most RECHECK away."""
        soonest = now + RECHECK
        for slug, schedule in self._schedules.items():
            if slug in self._elsewhere:
                soonest = min(soonest, self._elsewhere[slug])
                continue
            watermark = self._watermarks.get(slug)
            if watermark is None:
                return now
            soonest = min(soonest, max(schedule.next_after(watermark), now))
        return soonest

    def describe(self, now: datetime.datetime) -> list[str]:
        """One line per scheduled flow, for the log at start."""
        return [f"flow {slug!r} runs on schedule {s.cron!r} ({s.timezone}; {s.explain()}), "
                f"next at {s.next_after(now).isoformat()}"
                + (", catching up on missed ticks" if s.catch_up else "")
                for slug, s in self._schedules.items()]
