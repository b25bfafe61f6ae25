"""`pgflow supervise` from settings to exit code: get ready, build the
supervisor, run it. Exit codes (see supervisor.preflight): 0 after a stop;
1 when a restart may help (the database cannot be reached in time, the
metrics port is taken); 78 when it cannot (a shape conflict, credentials the
database refuses, no such database, a missing schema). The systemd unit lists
78 in RestartPreventExitStatus=."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pgflow
from pgflow import Flow, ShapeConflictError
from supervisor.metrics import Metrics
from supervisor.preflight import EXIT_CONFIG, EXIT_RETRY, Problem
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings
from supervisor.startup import prepare
from supervisor.supervisor import create

log = logging.getLogger("pgflow.supervisor")


def serve(settings: Settings, flows: Mapping[str, Flow]) -> int:
    """Run the supervisor until it is stopped; its exit code. Raises
    preflight.Problem for a failure that ends it before it serves."""
    metrics = Metrics(info=_info(settings))
    notifier = Notifier.from_environment()
    try:
        warnings = prepare(settings, flows, metrics, notifier)
    except ShapeConflictError as exc:
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
    }
