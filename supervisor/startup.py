"""Getting ready to serve: reach the database (waiting through an outage
rather than exiting into a restart loop), migrate, register the flows, and
read the server settings worth a warning."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import psycopg

from pgflow import Client, Flow, worker_api
from pgflow.db import redacted
from supervisor.backoff import Backoff
from supervisor.metrics import Metrics
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings

log = logging.getLogger("pgflow.supervisor")

# SQLSTATE classes and codes that waiting will not fix: wrong password or
# role, no such database. Everything else (refused, reset, timed out, the
# server starting or shutting down) may heal.
PERMANENT_SQLSTATES = ("28000", "28P01", "3D000")


class DatabaseUnreachable(Exception):
    """The database could not be reached in time, or never will be as configured."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def prepare(settings: Settings, flows: Mapping[str, Flow], metrics: Metrics,
            notifier: Notifier, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Migrate (if asked), register every flow, and return the server's
    warnings. Waits for the database with backoff, feeding the watchdog,
    for up to settings.startup_timeout seconds (0: as long as it takes)."""
    backoff = Backoff(0.5, 15.0)
    started = time.monotonic()
    while True:
        try:
            return _prepare_once(settings, flows, metrics)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if _permanent(exc):
                raise DatabaseUnreachable(
                    f"cannot use the database at {redacted(settings.database_url)}: {reason}",
                    permanent=True) from exc
            waited = time.monotonic() - started
            if settings.startup_timeout and waited >= settings.startup_timeout:
                raise DatabaseUnreachable(
                    f"cannot reach the database at {redacted(settings.database_url)} after "
                    f"{waited:.0f}s: {reason}", permanent=False) from exc
            delay = backoff.next_delay()
            log.warning("waiting for the database at %s (%s); next try in %.1fs",
                        redacted(settings.database_url), reason, delay)
            notifier.status(f"waiting for the database: {reason}")
            _sleep_feeding_watchdog(notifier, delay, sleep)


def _prepare_once(settings: Settings, flows: Mapping[str, Flow], metrics: Metrics) -> list[str]:
    with Client(settings.database_url, application_name=f"pgflow supervisor {settings.hostname}") as client:
        if settings.migrate:
            applied = client.migrate()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        for flow in flows.values():
            log.info("flow %r: %s", flow.slug, client.register(flow))
            metrics.declare_flow(flow.slug, list(flow.steps))
        return worker_api.server_warnings(client.connection())


def _permanent(exc: psycopg.OperationalError) -> bool:
    if exc.sqlstate in PERMANENT_SQLSTATES:
        return True
    text = str(exc)
    return "password authentication failed" in text or "does not exist" in text and "database" in text


def _sleep_feeding_watchdog(notifier: Notifier, seconds: float,
                            sleep: Callable[[float], None]) -> None:
    interval = notifier.watchdog_interval() or seconds
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        notifier.watchdog()
        sleep(min(left, interval))
