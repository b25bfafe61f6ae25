"""Getting ready to serve: reach the database (waiting through an outage
rather than exiting into a restart loop), migrate or check the schema,
register the flows, and read the server settings worth a warning."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import psycopg

from pgflow import Client, Flow, worker_api
from supervisor import preflight
from supervisor.backoff import Backoff
from supervisor.metrics import Metrics
from supervisor.preflight import EXIT_CONFIG, Problem
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings

log = logging.getLogger("pgflow.supervisor")

# Seconds added to each wait when asking systemd to extend the start timeout.
EXTEND_MARGIN = 30.0


def prepare(settings: Settings, flows: Mapping[str, Flow], metrics: Metrics,
            notifier: Notifier, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Migrate (or check the schema under --no-migrate), register every flow,
    and return the server's warnings.

    A database that cannot be reached is waited for, with backoff, feeding
    the watchdog, for up to settings.startup_timeout seconds (0: as long as
    it takes); a restart would do no better. Raises preflight.Problem: exit 78
    for what waiting cannot fix (a wrong password, no such database, a
    missing schema), 1 when the wait timed out.
    """
    backoff = Backoff(0.5, 15.0)
    started = time.monotonic()
    while True:
        try:
            return _prepare_once(settings, flows, metrics)
        except psycopg.OperationalError as exc:
            problem = preflight.explain(exc, settings.database_url)
            if problem.exit_code == EXIT_CONFIG:
                raise problem from None
            waited = time.monotonic() - started
            if settings.startup_timeout and waited >= settings.startup_timeout:
                raise Problem(f"{problem} (gave up after {waited:.0f}s, --startup-timeout)",
                              problem.exit_code) from None
            delay = backoff.next_delay()
            log.warning("waiting for the database: %s; next try in %.1fs", problem, delay)
            notifier.status("waiting for the database")
            # systemd's start timeout would kill a start that waits: extend it.
            notifier.notify(f"EXTEND_TIMEOUT_USEC={int((delay + EXTEND_MARGIN) * 1_000_000)}")
            _sleep_feeding_watchdog(notifier, delay, sleep)


def _prepare_once(settings: Settings, flows: Mapping[str, Flow], metrics: Metrics) -> list[str]:
    name = f"pgflow supervisor {settings.hostname}"
    with Client(settings.database_url, application_name=name) as client:
        if settings.migrate:
            applied = client.migrate()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        else:
            preflight.check_schema(client.connection())
        for flow in flows.values():
            log.info("flow %r: %s", flow.slug, client.register(flow))
            metrics.declare_flow(flow.slug, list(flow.steps))
        return worker_api.server_warnings(client.connection())


def _sleep_feeding_watchdog(notifier: Notifier, seconds: float,
                            sleep: Callable[[float], None]) -> None:
    interval = notifier.watchdog_interval() or seconds
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        notifier.watchdog()
        sleep(min(left, interval))
