"""Cron schedules: when a scheduled flow's runs are due.

Tick times are computed here, in Python, with `cronsim` (standard five-field
cron: minute hour day-of-month month day-of-week, with Debian cron's rules
for daylight-saving changes), in the schedule's IANA time zone. The engine
only records which ticks have been started (`pgflow.start_due_ticks`), so any
number of supervisors can compute the same ticks and each still starts once.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

UTC = datetime.UTC


class ScheduleError(ValueError):
    """A cron expression or time zone that cannot be used."""


@dataclass(frozen=True)
class Schedule:
    """`cron` in `timezone`; each tick starts one run with `input`. With
    `catch_up`, ticks missed while no supervisor ran are started afterwards,
    oldest first; without it only the latest missed tick is."""

    cron: str
    input: Any = None
    timezone: str = "UTC"
    catch_up: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str):
            raise ScheduleError(f"schedule must be a cron expression (a str), got {self.cron!r}")
        fields = self.cron.split()
        if len(fields) != 5:
            raise ScheduleError(
                f"schedule {self.cron!r} has {len(fields)} fields; give five: "
                "minute hour day-of-month month day-of-week (e.g. '*/5 * * * *')")
        object.__setattr__(self, "cron", " ".join(fields))
        if not isinstance(self.timezone, str):
            raise ScheduleError(f"timezone must be an IANA name such as 'Europe/Paris', "
                                f"got {self.timezone!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(f"timezone {self.timezone!r} is not a known IANA time zone "
                                "(such as 'UTC' or 'Europe/Paris')") from None
        if not isinstance(self.catch_up, bool):
            raise ScheduleError(f"catch_up must be True or False, got {self.catch_up!r}")
        try:
            next(CronSim(self.cron, self._local(datetime.datetime.now(UTC))))
        except CronSimError as exc:
            raise ScheduleError(f"schedule {self.cron!r} is not a valid cron expression: "
                                f"{exc}") from None
        except StopIteration:
            raise ScheduleError(f"schedule {self.cron!r} never fires") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _local(self, when: datetime.datetime) -> datetime.datetime:
        if when.tzinfo is None:
            raise ValueError("schedule times must be timezone-aware")
        return when.astimezone(self.zone)

    def next_after(self, when: datetime.datetime) -> datetime.datetime:
        """The first tick strictly after `when`, in UTC."""
        return next(CronSim(self.cron, self._local(when))).astimezone(UTC)

    def ticks(self, after: datetime.datetime, until: datetime.datetime,
              limit: int) -> list[datetime.datetime]:
        """Ticks in (after, until], oldest first, at most `limit`, in UTC."""
        out: list[datetime.datetime] = []
        for tick in self._forward(after):
            if tick > until or len(out) >= limit:
                break
            out.append(tick)
        return out

    def latest(self, until: datetime.datetime) -> datetime.datetime | None:
        """The last tick at or before `until` (to the second), in UTC."""
        start = self._local(until).replace(microsecond=0) + datetime.timedelta(seconds=1)
        try:
            return next(CronSim(self.cron, start, reverse=True)).astimezone(UTC)
        except StopIteration:
            return None

    def _forward(self, after: datetime.datetime) -> Iterator[datetime.datetime]:
        for tick in CronSim(self.cron, self._local(after)):
            yield tick.astimezone(UTC)

    def explain(self) -> str:
        """The expression in words, e.g. "Every fifth minute of every hour"."""
        try:
            return CronSim(self.cron, datetime.datetime.now(UTC)).explain()
        except Exception:  # noqa: BLE001 - a description is a nicety, never a failure
            return self.cron

    def as_dict(self) -> dict[str, Any]:
        return {"cron": self.cron, "timezone": self.timezone, "input": self.input,
                "catch_up": self.catch_up}
