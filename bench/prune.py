"""Pruning a backlog of finished runs while the engine keeps working.

    python bench/prune.py [--database-url URL] [--finished 100000] [--batch-size 200]

Creates (and afterwards drops) a scratch database on the server, completes
`--finished` runs of a three-step chain through the engine (start_flows,
claim, complete), moves them a month into the past, then prunes everything
older than a week in batches of `--batch-size` runs (pgflow.prune_runs, one
transaction each, as Client.prune and the supervisors' retention do) while
another connection keeps starting, claiming and completing single-step runs.

Prints and writes bench/results/prune.json: runs and tasks deleted, batches,
total time, per-batch transaction times (p50, p99, max: a batch holds its
row locks until it commits, so max is the longest any lock was held), and
the concurrent worker's round latency before and during the prune. Not a
pass/fail test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgflow import Client, Flow, db, worker_api

RESULTS = Path(__file__).resolve().parent / "results"
CHAIN = "bench_prune_chain"
LIVE = "bench_prune_live"


def chain_flow() -> Flow:
    flow = Flow(CHAIN)

    @flow.step()
    def first(input, ctx):
        return input

    @flow.step(depends_on=["first"])
    def second(deps, ctx):
        return deps

    @flow.step(depends_on=["second"])
    def third(deps, ctx):
        return deps

    return flow


def live_flow() -> Flow:
    flow = Flow(LIVE)

    @flow.step()
    def only(input, ctx):
        return input

    return flow


def fill(conn: psycopg.Connection, count: int) -> float:
    """Complete `count` chain runs through the engine, then age them a month."""
    started = time.perf_counter()
    worker_id = uuid.uuid4()
    worker_api.register_worker(conn, worker_id, "bench", os.getpid(), [CHAIN])
    for done in range(0, count, 10_000):
        n = min(10_000, count - done)
        conn.execute("select count(*) from pgflow.start_flows(%s, array(select to_jsonb(i) "
                     "from generate_series(1, %s) i))", (CHAIN, n))
        while tasks := worker_api.claim(conn, worker_id, [CHAIN], 1000):
            worker_api.complete(conn, [(t.task_id, t.token, t.input) for t in tasks])
    conn.execute("update pgflow.runs set started_at = started_at - interval '30 days', "
                 "completed_at = completed_at - interval '30 days' where flow_slug = %s", (CHAIN,))
    for table in ("queue", "tasks", "runs", "step_states"):
        conn.execute(f"vacuum analyze pgflow.{table}")
    return time.perf_counter() - started


class LiveWorker(threading.Thread):
    """Start a run, claim it, complete it, over and over; record each round's time."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.rounds: list[tuple[float, float]] = []  # (when, seconds)

    def run(self) -> None:
        conn = db.connect(self.dsn, "bench live worker")
        worker_id = uuid.uuid4()
        worker_api.register_worker(conn, worker_id, "bench", os.getpid(), [LIVE])
        while not self.stop.is_set():
            t0 = time.perf_counter()
            conn.execute("select count(*) from pgflow.start_flows(%s, array(select to_jsonb(i) "
                         "from generate_series(1, 10) i))", (LIVE,))
            tasks = worker_api.claim(conn, worker_id, [LIVE], 10)
            worker_api.complete(conn, [(t.task_id, t.token, 1) for t in tasks])
            self.rounds.append((time.perf_counter(), time.perf_counter() - t0))
        conn.close()

    def between(self, start: float, end: float) -> list[float]:
        return [s for when, s in self.rounds if start <= when <= end]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "max_ms": ordered[-1] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PGFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
    )
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()

    dbname = f"pgflow_bench_prune_{os.getpid()}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"create database {dbname}")
    dsn = make_conninfo(args.database_url, dbname=dbname)
    results: dict[str, Any] = {"benchmark": "prune", "finished_runs": args.finished,
                               "batch_size": args.batch_size}
    try:
        with Client(dsn, application_name="pgflow bench") as client:
            client.migrate()
            client.register(chain_flow())
            client.register(live_flow())
            conn = client.connection()
            results["postgres"] = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
            took = fill(conn, args.finished)
            print(f"completed and aged {args.finished:,} three-step runs in {took:.1f}s", flush=True)

            live = LiveWorker(dsn)
            live.start()
            time.sleep(3.0)
            quiet_end = time.perf_counter()
            cutoff = conn.execute("select now() - interval '7 days'").fetchone()[0]  # type: ignore[index]
            batches: list[float] = []
            runs = tasks = 0
            prune_start = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                row = conn.execute("select runs, tasks from pgflow.prune_runs(%s, %s)",
                                   (cutoff, args.batch_size)).fetchone()
                batches.append(time.perf_counter() - t0)
                assert row is not None
                runs, tasks = runs + row[0], tasks + row[1]
                if row[0] < args.batch_size:
                    break
            prune_end = time.perf_counter()
            time.sleep(1.0)
            live.stop.set()
            live.join()
            left = conn.execute("select count(*) from pgflow.runs where flow_slug = %s",
                                (CHAIN,)).fetchone()[0]  # type: ignore[index]
            dry = client.prune(datetime.timedelta(days=7), dry_run=True)

        results.update({
            "runs_deleted": runs, "tasks_deleted": tasks, "chain_runs_left": left,
            "dry_run_after": dry.runs, "batches": len(batches),
            "seconds": prune_end - prune_start,
            "runs_per_second": runs / (prune_end - prune_start),
            "batch_ms": summary(batches),
            "live_round_ms_before": summary(live.between(quiet_end - 3.0, quiet_end)),
            "live_round_ms_during": summary(live.between(prune_start, prune_end)),
        })
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"drop database if exists {dbname} with (force)")
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "prune.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
