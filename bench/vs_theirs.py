"""PgQueuer's side of bench/vs_pgqueuer.py: its schema on a scratch database,
N worker processes (bench/vs_pgqueuer_worker.py), batch size 100."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import psycopg
from pgqueuer.db import PsycopgDriver, SyncPsycopgDriver
from pgqueuer.queries import Queries, SyncQueries
from vs_cpu import CpuGroups
from vs_db import backend_pids, dead_tuples, one, tagged
from vs_processes import Child, wait_until

HERE = Path(__file__).resolve().parent
WORKER = HERE / "vs_pgqueuer_worker.py"
APPLICATION_NAME = "vs_pgqueuer theirs"
TABLES = ["public.pgqueuer", "public.pgqueuer_log", "public.pgqueuer_statistics"]
BATCH_SIZE = 100
READY_TIMEOUT = 60.0
FINAL = ("successful", "exception", "failed", "canceled", "deleted")


class Workers:
    """PgQueuer worker processes that have all started LISTENing."""

    def __init__(self, children: list[Child], conn: psycopg.Connection) -> None:
        self.children = children
        self._conn = conn

    def cpu_groups(self) -> CpuGroups:
        return CpuGroups(roles={"workers": [c.pid for c in self.children],
                                "postgres backends": backend_pids(self._conn, APPLICATION_NAME)})


class PgQueuerSide:
    name = "pgqueuer"
    tasks_per_run = {"noop": 1, "latency": 1}

    def __init__(self, dsn: str, results: Path, driver: str) -> None:
        self.dsn = dsn
        self.driver = driver
        self.log_path = results / "vs_pgqueuer-theirs.log"
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.queries = SyncQueries(SyncPsycopgDriver(self.conn))
        self._scratch = tempfile.TemporaryDirectory(prefix="vs_pgqueuer-")
        self.stamps = Path(self._scratch.name, "stamps")

    def setup(self) -> None:
        async def install() -> None:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                await Queries(PsycopgDriver(conn)).install()

        asyncio.run(install())

    def reset(self) -> None:
        self.conn.execute("truncate pgqueuer, pgqueuer_log, pgqueuer_statistics")

    @contextlib.contextmanager
    def workers(self, processes: int) -> Iterator[Workers]:
        ready_dir = Path(tempfile.mkdtemp(dir=self._scratch.name))
        env = {**os.environ, "PYTHONPATH": str(HERE),
               "VS_PGQ_CONNINFO": tagged(self.dsn, APPLICATION_NAME), "VS_PGQ_DRIVER": self.driver,
               "VS_PGQ_READY_DIR": str(ready_dir), "VS_PGQ_STAMPS": str(self.stamps)}
        children: list[Child] = []
        try:
            for _ in range(processes):
                children.append(Child([sys.executable, str(WORKER), "--batch-size", str(BATCH_SIZE)],
                                      self.log_path, env))
            wait_until(lambda: len(list(ready_dir.glob("*.ready"))) == processes, READY_TIMEOUT,
                       "PgQueuer workers starting", children)
            yield Workers(children, self.conn)
        finally:
            for child in children:
                child.stop()

    def fill(self, workload: str, count: int) -> None:
        """Enqueue `count` jobs in one statement (one transaction, one NOTIFY)."""
        entrypoint = _entrypoint(workload)
        self.queries.enqueue([entrypoint] * count, [str(i).encode() for i in range(count)], [0] * count)

    def finished(self, workload: str) -> int:
        row = one(
            self.conn, "select count(*) from pgqueuer_log where entrypoint = %s and status = any(%s)",
            (_entrypoint(workload), list(FINAL)),
        )
        return int(row[0])

    def window(self, workload: str) -> dict[str, float | int]:
        """Seconds from the first job picked to the last job done, from the
        log's timestamps (both now() of their transaction); how many jobs did
        not succeed; how many times jobs were picked in all."""
        seconds, not_completed, attempts = one(
            self.conn, "select extract(epoch from max(created) filter (where status = 'successful') "
            "                        - min(created) filter (where status = 'picked'))::float8, "
            "count(*) filter (where status::text not in ('queued', 'picked', 'successful')), "
            "count(*) filter (where status = 'picked') "
            "from pgqueuer_log where entrypoint = %s", (_entrypoint(workload),),
        )
        return {"seconds": float(seconds), "not_completed": int(not_completed), "attempts": int(attempts)}

    def dead_tuples(self) -> dict[str, dict[str, int]]:
        return dead_tuples(self.conn, TABLES)

    # -- latency ------------------------------------------------------------------

    def latency_samples(self, samples: int, warmup: int, pause: float) -> list[float]:
        """enqueue -> entrypoint start, in ms: the entrypoint appends time.time()
        to a file; the next job is enqueued once this one is out of the queue."""
        self.stamps.write_text("")
        latencies = []
        with self.stamps.open() as stamps:
            for i in range(warmup + samples):
                sent = time.time()
                self.queries.enqueue("stamp", str(i).encode())
                line = _next_line(stamps, timeout=10)
                payload, started = line.split()
                assert int(payload) == i, (payload, i)
                if i >= warmup:
                    latencies.append((float(started) - sent) * 1000)
                wait_until(self._queue_empty, 10, "PgQueuer finishing a latency job", interval=0.005)
                time.sleep(pause)
        return latencies

    def _queue_empty(self) -> bool:
        return bool(one(self.conn, "select not exists (select from pgqueuer)")[0])

    def close(self) -> None:
        self.conn.close()
        self._scratch.cleanup()


def _entrypoint(workload: str) -> str:
    return {"noop": "noop"}[workload]


def _next_line(file: TextIO, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line += file.readline()
        if line.endswith("\n"):
            return line
        time.sleep(0.0005)
    raise TimeoutError(f"PgQueuer's stamp entrypoint did not run within {timeout:.0f}s")
