"""Our side of bench/vs_pgqueuer.py: `pgflow supervise` as a subprocess on a
scratch database, with the flows of bench/bench_flows.py."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bench_flows
import psycopg
from vs_cpu import CpuGroups
from vs_db import backend_pids, dead_tuples, one, tagged
from vs_processes import BenchTimeout, Child, children_of

from pgflow import Client

HERE = Path(__file__).resolve().parent
PGFLOW = Path(sys.executable).parent / "pgflow"
APPLICATION_NAME = "vs_pgqueuer ours"
TABLES = ["pgflow.runs", "pgflow.step_states", "pgflow.tasks"]
READY_TIMEOUT = 60.0


class Supervisor:
    """A running `pgflow supervise` that has said READY=1 (sd_notify: it is
    connected, listening and has forked its executors)."""

    def __init__(self, child: Child, conn: psycopg.Connection) -> None:
        self.child = child
        self.children = [child]
        self._conn = conn

    def cpu_groups(self) -> CpuGroups:
        return CpuGroups(
            roles={"supervisor": [self.child.pid], "executors": children_of(self.child.pid),
                   "postgres backends": backend_pids(self._conn, APPLICATION_NAME)},
            reaped_into={"supervisor": "executors"},
        )


class Ours:
    name = "ours"
    tasks_per_run = {"noop": 1, "chain": 3, "latency": 1, "cpu": 1}

    def __init__(self, dsn: str, results: Path, extra_args: list[str]) -> None:
        self.dsn = dsn
        self.log_path = results / "vs_pgqueuer-ours.log"
        self.extra_args = extra_args
        self.burn_iterations = 0
        self.conn = psycopg.connect(dsn, autocommit=True)

    def setup(self) -> None:
        with Client(self.dsn) as client:
            client.migrate()
            for flow in (bench_flows.noop, bench_flows.chain, bench_flows.latency, bench_flows.cpu):
                client.register(flow)

    def reset(self) -> None:
        self.conn.execute("truncate pgflow.runs, pgflow.tasks, pgflow.step_states, pgflow.queue "
                          "cascade")

    @contextlib.contextmanager
    def workers(self, processes: int) -> Iterator[Supervisor]:
        with _notify_socket() as (sock, address):
            child = Child(
                [str(PGFLOW), "supervise", "--database-url", tagged(self.dsn, APPLICATION_NAME),
                 "--flows", "bench_flows", "--processes", str(processes),
                 "--metrics-port", str(_free_port()), *self.extra_args],
                self.log_path,
                {**os.environ, "PYTHONPATH": str(HERE), "NOTIFY_SOCKET": address},
            )
            try:
                _wait_ready(sock, child)
                yield Supervisor(child, self.conn)
            finally:
                child.stop()

    def fill(self, workload: str, count: int) -> None:
        """Start `count` runs in one statement (one transaction, one NOTIFY)."""
        flow, input_sql = self._workload(workload)
        self.conn.execute(
            f"select count(pgflow.start_flow(%s, {input_sql})) from generate_series(1, %s) i",
            (flow, count),
        )

    def finished(self, workload: str) -> int:
        row = one(
            self.conn, "select count(*) from pgflow.runs where flow_slug = %s and status <> 'started'",
            (self._workload(workload)[0],),
        )
        return int(row[0])

    def window(self, workload: str) -> dict[str, float | int]:
        """Seconds from the first task claimed to the last task completed, from
        the tasks' timestamps (both are now() of their transaction); how many
        runs did not complete; how many attempts the tasks took in all."""
        flow = self._workload(workload)[0]
        seconds, not_completed, attempts = one(
            self.conn, "select extract(epoch from max(t.completed_at) - min(t.started_at))::float8, "
            "(select count(*) from pgflow.runs where flow_slug = %(f)s and status <> 'completed'), "
            "sum(t.attempt) from pgflow.tasks t where t.flow_slug = %(f)s", {"f": flow},
        )
        return {"seconds": float(seconds), "not_completed": int(not_completed), "attempts": int(attempts)}

    def dead_tuples(self) -> dict[str, dict[str, int]]:
        return dead_tuples(self.conn, TABLES)

    def _workload(self, workload: str) -> tuple[str, str]:
        return {
            "noop": ("bench_noop", "to_jsonb(i)"),
            "chain": ("bench_chain", "to_jsonb(i)"),
            "cpu": ("bench_cpu", f"jsonb_build_object('iterations', {int(self.burn_iterations)})"),
        }[workload]

    # -- latency ------------------------------------------------------------------

    def latency_samples(self, samples: int, warmup: int, pause: float) -> list[float]:
        """start_flow -> handler start, in ms: the handler returns time.time()."""
        latencies = []
        with Client(self.dsn) as client:
            for i in range(warmup + samples):
                sent = time.time()
                run = client.wait(client.start_flow("bench_latency", i), timeout=10)
                if i >= warmup:
                    latencies.append((run.output["stamp"] - sent) * 1000)
                time.sleep(pause)
        return latencies

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def _notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace standing in for systemd's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"vs_pgqueuer-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind(b"\0" + name.encode())
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _wait_ready(sock: socket.socket, child: Child) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"pgflow supervise did not start: {child.describe_exit()}")
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable and b"READY=1" in sock.recv(4096).split(b"\n"):
            return
    raise BenchTimeout(f"pgflow supervise did not say READY=1 within {READY_TIMEOUT:.0f}s; "
                       f"see {child.log_path}")


def _free_port() -> int:
    """A free port for /metrics: metrics stay on, as by default, without
    colliding with another supervisor on this machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
