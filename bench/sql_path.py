"""Micro-benchmark of the SQL path alone (no supervisor, no executors).

    python bench/sql_path.py [--database-url URL] [--runs 5000] [--finished 1000000]

Creates (and afterwards drops) a scratch database on the server, registers
one-step flows, fills the tables with `--finished` completed runs (plans must
stay fast when finished rows pile up; autovacuum may be off, as on this
project's CI server, so dead tuples pile up too), then measures with one
connection:

  batch N      claim N + complete N, repeated until `--runs` runs are done
  held         the same at the largest batch while another worker holds
               `--held` tasks started (long tasks, or other supervisors' prefetch)
  unserved     one claim's latency, with and without `--unserved` visible
               tasks of a flow this worker does not serve
  start        start_flow, one call per statement (pipelined), and the batch
               form start_flows, in runs per second
  wal / hot    WAL bytes per task (claim + complete) and the share of HOT
               updates per table

Prints the figures and writes bench/results/sql_path.json. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgflow import Client, Flow, db, worker_api

RESULTS = Path(__file__).resolve().parent / "results"
FLOW = "bench_noop"
UNSERVED = "bench_unserved"


def noop_flow(slug: str) -> Flow:
    flow = Flow(slug)

    @flow.step()
    def only(input, ctx):
        return input

    return flow


def fill_finished(client: Client, count: int) -> float:
    """Start `count` runs and complete them through the engine, in big batches."""
    started = time.perf_counter()
    conn = client.connection()
    worker = Worker(conn, [FLOW])
    chunk = 20_000
    for done in range(0, count, chunk):
        n = min(chunk, count - done)
        start_batch(conn, FLOW, n)
        while worker.drain_once(1000):
            pass
    for table in ("queue", "tasks", "runs", "step_states"):
        conn.execute(f"vacuum analyze pgflow.{table}")
    return time.perf_counter() - started


def start_batch(conn: psycopg.Connection, flow: str, count: int) -> None:
    conn.execute(
        "select count(pgflow.start_flow(%s, to_jsonb(i))) from generate_series(1, %s) i"
        if not has_start_flows(conn) else
        "select count(*) from pgflow.start_flows(%s, array(select to_jsonb(i) "
        "from generate_series(1, %s) i))",
        (flow, count),
    )


_HAS_START_FLOWS: dict[int, bool] = {}


def has_start_flows(conn: psycopg.Connection) -> bool:
    key = id(conn)
    if key not in _HAS_START_FLOWS:
        row = conn.execute("select to_regproc('pgflow.start_flows') is not null").fetchone()
        _HAS_START_FLOWS[key] = bool(row and row[0])
    return _HAS_START_FLOWS[key]


class Worker:
    def __init__(self, conn: psycopg.Connection, flows: list[str]) -> None:
        self.conn = conn
        self.flows = flows
        self.worker_id = uuid.uuid4()
        worker_api.register_worker(conn, self.worker_id, platform.node(), os.getpid(), flows)

    def claim(self, batch: int) -> list[Any]:
        return worker_api.claim(self.conn, self.worker_id, self.flows, batch)

    def drain_once(self, batch: int) -> int:
        tasks = self.claim(batch)
        if tasks:
            worker_api.complete(self.conn, [answer(t) for t in tasks])
        return len(tasks)


def answer(task: Any) -> tuple[Any, ...]:
    return (task.task_id, task.token, task.input)


def drain(worker: Worker, batch: int, expected: int) -> float:
    done = 0
    started = time.perf_counter()
    while done < expected:
        n = worker.drain_once(batch)
        if not n:
            break
        done += n
    seconds = time.perf_counter() - started
    assert done == expected, (done, expected)
    return seconds


def wal_lsn(conn: psycopg.Connection) -> int:
    row = conn.execute("select pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def table_stats(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    conn.execute("select pg_stat_clear_snapshot()")
    rows = conn.execute(
        "select relname, n_tup_upd, n_tup_hot_upd from pg_stat_user_tables "
        "where schemaname = 'pgflow'"
    ).fetchall()
    return {name: (upd, hot) for name, upd, hot in rows}


def hot_share(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, Any]:
    shares: dict[str, Any] = {}
    for table, (upd, hot) in after.items():
        upd0, hot0 = before.get(table, (0, 0))
        if upd - upd0:
            shares[table] = {"updates": upd - upd0, "hot": round((hot - hot0) / (upd - upd0), 3)}
    return shares


def bench_batches(client: Client, dsn: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with db.connect(dsn, "pgflow bench worker") as worker_conn:
        worker = Worker(worker_conn, [FLOW])
        for batch in args.batches:
            start_batch(client.connection(), FLOW, args.runs)
            time.sleep(1)  # let the statistics collector catch up
            stats0, wal0 = table_stats(worker_conn), wal_lsn(worker_conn)
            seconds = drain(worker, batch, args.runs)
            wal1 = wal_lsn(worker_conn)
            time.sleep(1)
            stats1 = table_stats(worker_conn)
            row = {"batch": batch, "tasks": args.runs, "seconds": round(seconds, 3),
                   "tasks_per_second": round(args.runs / seconds),
                   "wal_bytes_per_task": round((wal1 - wal0) / args.runs),
                   "hot": hot_share(stats0, stats1)}
            print(f"batch {batch:>4}: {row['tasks_per_second']:>7} tasks/s claim+complete, "
                  f"{row['wal_bytes_per_task']} WAL bytes/task, HOT {row['hot']}", flush=True)
            results.append(row)
    return results


def bench_held(client: Client, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    """Drain while another worker holds `held` tasks started."""
    batch = max(args.batches)
    with db.connect(dsn, "pgflow bench holder") as holder_conn, \
            db.connect(dsn, "pgflow bench worker") as worker_conn:
        start_batch(client.connection(), FLOW, args.held)
        holder = Worker(holder_conn, [FLOW])
        held = []
        while len(held) < args.held:
            got = holder.claim(min(1000, args.held - len(held)))
            if not got:
                break
            held += got
        start_batch(client.connection(), FLOW, args.runs)
        worker = Worker(worker_conn, [FLOW])
        seconds = drain(worker, batch, args.runs)
        # Heartbeat of the holder over everything it holds.
        started = time.perf_counter()
        worker_api.heartbeat(holder_conn, holder.worker_id, [(t.task_id, t.token) for t in held[:200]])
        heartbeat_ms = (time.perf_counter() - started) * 1000
        worker_api.complete(holder_conn, [answer(t) for t in held])
    row = {"batch": batch, "held": len(held), "tasks_per_second": round(args.runs / seconds),
           "heartbeat_200_ms": round(heartbeat_ms, 2)}
    print(f"held {len(held)}: {row['tasks_per_second']:>7} tasks/s at batch {batch}; "
          f"heartbeat of 200 ids {row['heartbeat_200_ms']} ms", flush=True)
    return row


def claim_latency_ms(worker: Worker, batch: int, samples: int) -> float:
    """Median latency of a claim that finds `batch` tasks (each given back after)."""
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        tasks = worker.claim(batch)
        timings.append((time.perf_counter() - started) * 1000)
        worker_api.complete(worker.conn, [answer(t) for t in tasks])
    return statistics.median(timings)


def bench_unserved(client: Client, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    conn = client.connection()
    with db.connect(dsn, "pgflow bench worker") as worker_conn:
        worker = Worker(worker_conn, [FLOW])
        start_batch(conn, FLOW, 2100)
        without = {b: claim_latency_ms(worker, b, 20) for b in (1, 100)}
        # Tasks of a flow nobody here serves, older than the served ones.
        start_batch(conn, UNSERVED, args.unserved)
        start_batch(conn, FLOW, 2100)
        with_unserved = {b: claim_latency_ms(worker, b, 20) for b in (1, 100)}
        while worker.drain_once(1000):
            pass
    row = {"unserved_visible": args.unserved,
           "claim_ms_without": {str(b): round(v, 3) for b, v in without.items()},
           "claim_ms_with": {str(b): round(v, 3) for b, v in with_unserved.items()}}
    print(f"claim latency (ms, batch 1 / 100): {without[1]:.3f} / {without[100]:.3f} alone, "
          f"{with_unserved[1]:.3f} / {with_unserved[100]:.3f} with {args.unserved} visible "
          "tasks of an unserved flow", flush=True)
    return row


def bench_start(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    conn = client.connection()
    count = args.runs
    started = time.perf_counter()
    with conn.pipeline():
        for i in range(count):
            conn.execute("select pgflow.start_flow(%s, %s::jsonb, %s)", (FLOW, str(i), uuid.uuid4()))
    single = count / (time.perf_counter() - started)
    row: dict[str, Any] = {"start_flow_runs_per_second": round(single)}
    if has_start_flows(conn):
        inputs = [str(i) for i in range(count * 4)]
        started = time.perf_counter()
        for chunk in range(0, len(inputs), 1000):
            conn.execute("select count(*) from pgflow.start_flows(%s, %s::jsonb[])",
                         (FLOW, inputs[chunk:chunk + 1000]))
        row["start_flows_runs_per_second"] = round(len(inputs) / (time.perf_counter() - started))
    print(f"start_flow: {row['start_flow_runs_per_second']} runs/s one per statement; "
          f"start_flows: {row.get('start_flows_runs_per_second', 'n/a')} runs/s in batches of 1000",
          flush=True)
    with db.connect(client.dsn, "pgflow bench cleanup") as worker_conn:
        worker = Worker(worker_conn, [FLOW])
        while worker.drain_once(1000):
            pass
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PGFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
    )
    parser.add_argument("--runs", type=int, default=5000, help="runs per measurement")
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished runs to pre-fill")
    parser.add_argument("--held", type=int, default=5000, help="tasks held started by another worker")
    parser.add_argument("--unserved", type=int, default=100_000,
                        help="visible tasks of a flow nobody serves")
    parser.add_argument("--batches", default="1,10,100",
                        type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--only", default="batches,held,unserved,start",
                        type=lambda s: set(s.split(",")))
    args = parser.parse_args()

    dbname = f"pgflow_bench_{os.getpid()}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"create database {dbname}")
    dsn = make_conninfo(args.database_url, dbname=dbname)
    results: dict[str, Any] = {"benchmark": "sql_path", "runs": args.runs,
                               "finished_rows_prefilled": args.finished}
    try:
        with Client(dsn, application_name="pgflow bench") as client:
            client.migrate()
            client.register(noop_flow(FLOW))
            client.register(noop_flow(UNSERVED))
            conn = client.connection()
            results["postgres"] = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
            results["autovacuum"] = conn.execute("show autovacuum").fetchone()[0]  # type: ignore[index]
            if args.finished:
                took = fill_finished(client, args.finished)
                print(f"pre-filled {args.finished} finished runs in {took:.1f}s "
                      f"(autovacuum {results['autovacuum']})", flush=True)
            if "batches" in args.only:
                results["batches"] = bench_batches(client, dsn, args)
            if "held" in args.only:
                results["held"] = bench_held(client, dsn, args)
            if "unserved" in args.only:
                results["unserved"] = bench_unserved(client, dsn, args)
            if "start" in args.only:
                results["start"] = bench_start(client, args)
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"drop database if exists {dbname} with (force)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sql_path.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
