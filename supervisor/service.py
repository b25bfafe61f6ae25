"""`pgflow supervise` from settings to exit code: get ready, build the
supervisor, run it. Exit codes (see supervisor.preflight): 0 after a stop;
1 when a restart may help (the database cannot be reached in time, the
metrics port is taken); 78 when it cannot (a shape conflict, credentials the
database refuses, no such database, a missing schema, a role that may not
do what starting needs). The systemd unit lists
78 in RestartPreventExitStatus=."""

from __future__ import annotations

import collections
import logging
import selectors
import time
from collections.abc import Mapping

import pgflow
from pgflow import Flow, PermissionDeniedError, ShapeConflictError
from pgflow.db import conninfo
from supervisor.answers import PendingAnswers
from supervisor.database import Database
from supervisor.executors import fork_executor
from supervisor.http import HttpEndpoint
from supervisor.maintenance import QueueVacuum
from supervisor.metrics import Metrics
from supervisor.pool import Pool
from supervisor.preflight import EXIT_CONFIG, EXIT_RETRY, Problem
from supervisor.rounds import Rounds
from supervisor.schedules import Scheduler
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings
from supervisor.signals import SignalQueue
from supervisor.startup import prepare
from supervisor.supervisor import Supervisor
from supervisor.tasks import HeldTask

log = logging.getLogger("pgflow.supervisor")


def serve(settings: Settings, flows: Mapping[str, Flow]) -> int:
    """Run the supervisor until it is stopped; its exit code. Raises
    preflight.Problem for a failure that ends it before it serves."""
    metrics = Metrics(info=_info(settings))
    notifier = Notifier.from_environment()
    try:
        warnings = prepare(settings, flows, metrics, notifier)
    except (ShapeConflictError, PermissionDeniedError) as exc:  # a restart cannot fix either
        raise Problem(str(exc), EXIT_CONFIG) from None
    for warning in warnings:
        log.warning("%s", warning)
    supervisor = create(settings, flows, metrics, notifier)
    try:
        return supervisor.run()
    except OSError as exc:  # the metrics port is taken: worth a restart, not a config error
        raise Problem(f"{exc} (--metrics-host / --metrics-port)", EXIT_RETRY) from None


def _info(settings: Settings) -> dict[str, str]:
    s = settings
    return {
        "version": pgflow.__version__, "hostname": s.hostname, "processes": str(s.processes),
        "prefetch": str(s.prefetch), "executor_depth": str(s.executor_depth),
        "max_tasks_per_child": str(s.max_tasks_per_child),
        "max_memory_per_child_mib": str(s.max_memory_per_child),
        "shutdown_timeout_s": str(s.shutdown_timeout),
        "pooler": s.pooler, "listens": str(s.listen_target() is not None).lower(),
    }


def create(settings: Settings, flows: Mapping[str, Flow], metrics: Metrics,
           notifier: Notifier) -> Supervisor:
    """A supervisor with its real collaborators, wired together."""
    selector = selectors.DefaultSelector()
    buffer: collections.deque[HeldTask] = collections.deque()
    answers = PendingAnswers(metrics, settings.complete_batch)
    pool = Pool(settings.processes,
                lambda: fork_executor(flows, settings.database_url, settings.max_output_bytes),
                selector, metrics, depth=settings.executor_depth, kill_grace=settings.kill_grace,
                max_tasks_per_executor=settings.max_tasks_per_child,
                max_memory_mib=settings.max_memory_per_child)

    def held() -> list[HeldTask]:
        in_executors = [t for child in pool.children.values() for t in child.tasks]
        return [*buffer, *in_executors, *answers.held(), *rounds.releases]

    def lost(task_ids: set[int]) -> None:
        # Without notifications (a transaction pooler and no --listen-url) this
        # is how a cancel reaches running handlers: at the next heartbeat.
        if pool.kill_lost(task_ids, time.monotonic()):
            log.info("stopped running tasks that are no longer ours (cancelled, or taken over)")

    rounds = Rounds(settings, list(flows), metrics, buffer, held, scheduler=Scheduler(flows),
                    on_lost=lost)

    def cancelled(run_ids: set[str]) -> None:
        rounds.drop_runs(run_ids)
        if pool.kill_runs(run_ids, time.monotonic()):
            log.info("stopped the running tasks of %d cancelled runs", len(run_ids))

    name = f"pgflow supervisor {settings.hostname}"
    listen_url = settings.listen_target()
    database = Database(conninfo(settings.database_url, name),
                        conninfo(listen_url or settings.database_url, name),
                        selector, metrics, on_up=rounds.on_database_up,
                        on_tasks=rounds.on_notified, on_cancel=cancelled,
                        listens=listen_url is not None, poll_interval=settings.poll_interval,
                        poll_interval_without_notifications=(
                            settings.poll_interval_without_notifications),
                        prepare=settings.pooler != "transaction")
    supervisor = Supervisor(settings, flows, metrics=metrics, selector=selector,
                            signals=SignalQueue(), pool=pool, database=database, rounds=rounds,
                            answers=answers, buffer=buffer, notifier=notifier, http=None,
                            vacuum=QueueVacuum(database))
    if settings.metrics_port:
        supervisor.http = HttpEndpoint(settings.metrics_host, settings.metrics_port,
                                       supervisor.endpoints())
    return supervisor
