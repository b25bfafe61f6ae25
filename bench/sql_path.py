"""Micro-benchmark of the SQL path alone: claim + complete of single-step runs.

    python bench/sql_path.py [--database-url URL] [--runs 5000] [--finished 200000]

Creates (and afterwards drops) a scratch database on the server, registers a
one-step flow, optionally fills the tables with `--finished` completed runs
(claim plans must stay fast when finished rows pile up), then for each batch
size starts `--runs` runs and drains them with one connection: claim N tasks,
complete N tasks, repeat. Prints tasks per second and writes
bench/results/sql_path.json. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from pgflow import Client, Flow, db, worker_api

RESULTS = Path(__file__).resolve().parent / "results"


def noop_flow() -> Flow:
    flow = Flow("bench_noop")

    @flow.step()
    def only(input, ctx):
        return input

    return flow


def fill_finished(conn: psycopg.Connection, count: int) -> float:
    """Insert `count` completed single-step runs directly (fast, set-based)."""
    started = time.perf_counter()
    conn.execute(
        """
        with r as (
            insert into pgflow.runs (run_id, flow_slug, status, input, output,
                                     remaining_steps, completed_at)
            select gen_random_uuid(), 'bench_noop', 'completed', to_jsonb(i),
                   jsonb_build_object('only', i), 0, now()
            from generate_series(1, %(n)s) i
            returning run_id, input
        ), s as (
            insert into pgflow.step_states (run_id, flow_slug, step_slug, status,
                                            remaining_deps, remaining_tasks, task_count, output)
            select run_id, 'bench_noop', 'only', 'completed', 0, 0, 1, input from r
        )
        insert into pgflow.tasks (run_id, flow_slug, step_slug, status, attempt, output,
                                  completed_at)
        select run_id, 'bench_noop', 'only', 'completed', 1, input, now() from r
        """,
        {"n": count},
    )
    conn.execute("vacuum analyze pgflow.tasks")
    conn.execute("vacuum analyze pgflow.runs")
    conn.execute("vacuum analyze pgflow.step_states")
    return time.perf_counter() - started


def start_runs(client: Client, count: int) -> float:
    conn = client.connection()
    started = time.perf_counter()
    with conn.pipeline():
        for i in range(count):
            conn.execute(
                "select pgflow.start_flow('bench_noop', %s::jsonb, %s)", (str(i), uuid.uuid4())
            )
    return count / (time.perf_counter() - started)


def drain_in_batches(conn: psycopg.Connection, batch: int) -> tuple[int, float]:
    worker_id = uuid.uuid4()
    worker_api.register_worker(conn, worker_id, platform.node(), os.getpid(), ["bench_noop"])
    done = 0
    started = time.perf_counter()
    while True:
        tasks = worker_api.claim(conn, worker_id, ["bench_noop"], batch)
        if not tasks:
            break
        worker_api.complete(conn, [(t.task_id, t.attempt, t.input) for t in tasks])
        done += len(tasks)
    return done, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PGFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
    )
    parser.add_argument("--runs", type=int, default=5000, help="runs per batch size")
    parser.add_argument("--finished", type=int, default=200_000, help="finished runs to pre-fill")
    parser.add_argument("--batches", default="1,10,100")
    args = parser.parse_args()

    dbname = f"pgflow_bench_{os.getpid()}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"create database {dbname}")
    dsn = make_conninfo(args.database_url, dbname=dbname)
    results: dict[str, object] = {
        "benchmark": "sql_path",
        "runs_per_batch_size": args.runs,
        "finished_rows_prefilled": args.finished,
        "postgres": None,
        "results": [],
    }
    try:
        with Client(dsn, application_name="pgflow bench") as client:
            client.migrate()
            client.register(noop_flow())
            conn = client.connection()
            results["postgres"] = conn.execute("show server_version").fetchone()[0]
            if args.finished:
                took = fill_finished(conn, args.finished)
                print(f"pre-filled {args.finished} finished runs in {took:.1f}s")
            with db.connect(dsn, "pgflow bench worker") as worker_conn:
                for batch in [int(b) for b in args.batches.split(",")]:
                    start_rate = start_runs(client, args.runs)
                    done, seconds = drain_in_batches(worker_conn, batch)
                    assert done == args.runs, (done, args.runs)
                    rate = done / seconds
                    print(f"batch {batch:>4}: {rate:>8.0f} tasks/s claim+complete "
                          f"({done} tasks in {seconds:.2f}s); start_flow {start_rate:.0f} runs/s")
                    results["results"].append(  # type: ignore[union-attr]
                        {"batch": batch, "tasks": done, "seconds": round(seconds, 3),
                         "tasks_per_second": round(rate), "start_flow_runs_per_second":
                         round(start_rate)}
                    )
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"drop database if exists {dbname} with (force)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sql_path.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
