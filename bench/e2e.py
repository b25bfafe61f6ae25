"""End-to-end benchmark through the real supervisor (`pgflow supervise`).

    python bench/e2e.py [--database-url URL] [--processes 2] [--runs 20000]
                        [--pgbouncer session|transaction|transaction-polling]

Creates (and afterwards drops) a scratch database, then measures:
  prefilled   single-step no-op runs: queue filled first, then one supervisor drains it
  steady      a producer (one connection, 100 runs per statement) starts runs while
              the supervisor runs them; limited by how fast the producer can start runs
  chain       three-step chains (a -> b -> c), prefilled
  map         one run of a 1,000-element map step
  latency     start_flow -> handler start on an idle system, p50 / p99
With --pgbouncer the supervisor reaches Postgres through a PgBouncer this
script starts (tests/pgbouncer.py): in session mode; in transaction mode
listening on Postgres directly (--listen-url); or in transaction mode without
a listen URL (the supervisor polls). Runs are started and counted directly.
Prints the figures and writes bench/results/e2e.json. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from pgflow import Client

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PGFLOW = Path(sys.executable).parent / "pgflow"


def start_runs(dsn: str, flow: str, count: int, input_sql: str = "to_jsonb(i)") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"select pgflow.start_flow(%s, {input_sql}) from generate_series(1, %s) i",
            (flow, count),
        )


def finished(conn: psycopg.Connection, flow: str) -> int:
    row = conn.execute(
        "select count(*) from pgflow.runs where flow_slug = %s and status <> 'started'", (flow,)
    ).fetchone()
    return int(row[0])


def wait_finished(dsn: str, flow: str, count: int, timeout: float = 600) -> float:
    """Wait until `count` runs of `flow` are finished; return the seconds from
    the first claim to the last completion, read from the tasks' timestamps
    (so supervisor start-up and this poll's 20 ms period are not counted)."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while finished(conn, flow) < count:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{flow}: not done after {timeout}s")
            time.sleep(0.02)
        row = conn.execute(
            "select extract(epoch from max(completed_at) - min(started_at))::float8 "
            "from pgflow.tasks where flow_slug = %s", (flow,)
        ).fetchone()
    return float(row[0])


class Supervisor:
    def __init__(self, dsn: str, processes: int, extra: list[str], via: str | None = None) -> None:
        """A supervisor on `dsn`'s database, connecting through `via` when given."""
        self.log = open(RESULTS / "e2e-supervisor.log", "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(HERE), "PGFLOW_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [str(PGFLOW), "supervise", "--database-url", via or dsn, "--flows", "bench_flows",
             "--processes", str(processes), "--metrics-port", "0", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 30
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "select count(*) from pgflow.workers where pid = %s", (self.proc.pid,)
                ).fetchone()
                if row and row[0]:
                    time.sleep(0.3)  # executors forking
                    return
                time.sleep(0.05)
        raise RuntimeError("supervisor did not start; see bench/results/e2e-supervisor.log")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def bench_prefilled(dsn: str, args: argparse.Namespace, flow: str, runs: int, tasks_per_run: int,
                    input_sql: str = "to_jsonb(i)") -> dict:
    start_runs(dsn, flow, runs, input_sql)
    supervisor = Supervisor(dsn, args.processes, args.supervisor_args, args.supervisor_dsn)
    try:
        seconds = wait_finished(dsn, flow, runs)
    finally:
        supervisor.stop()
    return {"runs": runs, "tasks": runs * tasks_per_run, "seconds": round(seconds, 3),
            "runs_per_second": round(runs / seconds), "tasks_per_second":
            round(runs * tasks_per_run / seconds)}


def bench_steady(dsn: str, args: argparse.Namespace) -> dict:
    supervisor = Supervisor(dsn, args.processes, args.supervisor_args, args.supervisor_dsn)
    runs, batch = args.runs, 100
    produced = threading.Event()

    def produce() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(runs // batch):
                conn.execute("select pgflow.start_flow('bench_noop', to_jsonb(i)) "
                             "from generate_series(1, %s) i", (batch,))
        produced.set()

    try:
        started = time.perf_counter()
        producer = threading.Thread(target=produce)
        producer.start()
        seconds = wait_finished(dsn, "bench_noop", runs)
        producer.join()
        produce_seconds = time.perf_counter() - started
    finally:
        supervisor.stop()
    return {"runs": runs, "seconds": round(seconds, 3), "tasks_per_second": round(runs / seconds),
            "producer_batch": batch, "producer_seconds": round(produce_seconds, 3)}


def bench_latency(dsn: str, args: argparse.Namespace, samples: int = 300) -> dict:
    supervisor = Supervisor(dsn, args.processes, args.supervisor_args, args.supervisor_dsn)
    latencies = []
    try:
        with Client(dsn) as client:
            for i in range(samples):
                sent = time.time()
                run = client.wait(client.start_flow("bench_latency", i), timeout=10)
                latencies.append((run.output["stamp"] - sent) * 1000)
                time.sleep(0.01)
    finally:
        supervisor.stop()
    latencies.sort()
    return {"samples": samples, "p50_ms": round(statistics.median(latencies), 2),
            "p90_ms": round(latencies[int(samples * 0.9)], 2),
            "p99_ms": round(latencies[int(samples * 0.99)], 2),
            "max_ms": round(latencies[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "PGFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--only", default="prefilled,steady,chain,map,latency")
    parser.add_argument("--pgbouncer", choices=["session", "transaction", "transaction-polling"],
                        help="the supervisor goes through a PgBouncer in this mode")
    parser.add_argument("supervisor_args", nargs="*", help="extra `pgflow supervise` options")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)

    dbname = f"pgflow_e2e_bench_{os.getpid()}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"create database {dbname}")
    dsn = make_conninfo(args.database_url, dbname=dbname)
    args.supervisor_dsn = None
    bouncer = None
    if args.pgbouncer:
        sys.path.insert(0, str(HERE.parent))
        from tests.pgbouncer import PgBouncer

        bouncer = PgBouncer(args.database_url, "session" if args.pgbouncer == "session"
                            else "transaction")
        args.supervisor_dsn = bouncer.url(dbname)
        pooler = ["--pooler", bouncer.mode]
        listen = ["--listen-url", dsn] if args.pgbouncer == "transaction" else []
        args.supervisor_args = [*pooler, *listen, *args.supervisor_args]
    results: dict[str, object] = {"benchmark": "e2e", "processes": args.processes,
                                  "pgbouncer": args.pgbouncer,
                                  "supervisor_args": args.supervisor_args, "cpus": os.cpu_count()}
    try:
        with Client(dsn) as client:
            client.migrate()
            sys.path.insert(0, str(HERE))
            import bench_flows

            for flow in (bench_flows.noop, bench_flows.chain, bench_flows.fanout,
                         bench_flows.latency):
                client.register(flow)
        only = set(args.only.split(","))
        cases = {
            "prefilled": lambda: bench_prefilled(dsn, args, "bench_noop", args.runs, 1),
            "steady": lambda: bench_steady(dsn, args),
            "chain": lambda: bench_prefilled(dsn, args, "bench_chain", args.runs // 3, 3),
            "map": lambda: bench_prefilled(
                dsn, args, "bench_map", 1, 1000,
                "(select jsonb_agg(g) from generate_series(1, 1000) g)"),
            "latency": lambda: bench_latency(dsn, args),
        }
        for name, case in cases.items():
            if name in only:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("truncate pgflow.runs, pgflow.tasks, pgflow.step_states, "
                                 "pgflow.queue cascade")
                results[name] = case()
                print(f"{name:>10}: {results[name]}", flush=True)
    finally:
        if bouncer is not None:
            bouncer.stop()
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"drop database if exists {dbname} with (force)")
    out = RESULTS / "e2e.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
