"""`pgflow supervise` from settings to exit code: get ready, build the
supervisor, run it. Exit codes: 0 after a stop; 1 when a restart may help
(the database cannot be reached in time, the metrics port is taken); 78
(EX_CONFIG) when it cannot (a shape conflict, a database that refuses these
credentials or does not exist). The systemd unit lists 78 in
RestartPreventExitStatus=."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import pgflow
from pgflow import Flow, ShapeConflictError
from supervisor.metrics import Metrics
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings
from supervisor.startup import DatabaseUnreachable, prepare
from supervisor.supervisor import create

log = logging.getLogger("pgflow.supervisor")

EXIT_RETRY = 1
EXIT_CONFIG = 78


def serve(settings: Settings, flows: Mapping[str, Flow]) -> int:
    metrics = Metrics(info=_info(settings))
    notifier = Notifier.from_environment()
    try:
        warnings = prepare(settings, flows, metrics, notifier)
    except ShapeConflictError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except DatabaseUnreachable as exc:
        return _fail(str(exc), EXIT_CONFIG if exc.permanent else EXIT_RETRY)
    for warning in warnings:
        log.warning("%s", warning)
    supervisor = create(settings, flows, metrics, notifier)
    try:
        return supervisor.run()
    except OSError as exc:  # the metrics port is taken: worth a restart, not a config error
        return _fail(str(exc), EXIT_RETRY)


def _fail(message: str, code: int) -> int:
    print(f"pgflow supervise: {message}", file=sys.stderr)
    return code


def _info(settings: Settings) -> dict[str, str]:
    s = settings
    return {
        "version": pgflow.__version__, "hostname": s.hostname, "processes": str(s.processes),
        "prefetch": str(s.prefetch), "executor_depth": str(s.executor_depth),
        "max_tasks_per_child": str(s.max_tasks_per_child),
        "max_memory_per_child_mib": str(s.max_memory_per_child),
        "shutdown_timeout_s": str(s.shutdown_timeout),
    }
