"""Keeping the queue lean when nothing else does.

pgflow.queue takes a row per task and gives it back when the task ends, so
its dead rows pile up fast; claims step over them until vacuum removes them
(measured: 200,000 tasks through the engine doubled a claim's latency, 0.38
-> 0.73 ms). Autovacuum does this where it runs. On a server where it is off
(seen in production, by mistake), each supervisor vacuums pgflow.queue
itself every `queue_vacuum_interval` seconds (10): the table holds only
unfinished tasks, so this takes milliseconds. VACUUM cannot run in a
pipeline, so it goes over the listening connection. A role that may not
vacuum the table is told so once in the log.
"""

from __future__ import annotations

import logging

from supervisor.database import Database
from supervisor.pgconn import Rows

log = logging.getLogger("pgflow.supervisor")

VACUUM = "vacuum (skip_locked) pgflow.queue"


class QueueVacuum:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._refused = False
        self.runs = 0

    def run(self) -> None:
        """Vacuum the queue if autovacuum is off on this server."""
        if not self._refused:
            self._database.send_maintenance("select current_setting('autovacuum')",
                                            self._after_setting)

    def _after_setting(self, result: object) -> None:
        if isinstance(result, Rows) and result.values and result.values[0][0] == b"off":
            self._database.send_maintenance(VACUUM, self._after_vacuum)

    def _after_vacuum(self, result: object) -> None:
        if isinstance(result, Rows):
            self.runs += 1
        elif not self._refused:
            self._refused = True
            log.warning("cannot vacuum pgflow.queue (%s); with autovacuum off its dead rows pile "
                        "up: vacuum it from cron as its owner (deploy/README.md)", result)
