"""What a concurrency limit costs a claim, with many tasks waiting.

    python bench/concurrency_limits.py [--database-url URL] [--waiting 100000] [--repeat 300]

Creates (and afterwards drops) a scratch database, registers flows without
and with limits, queues `--waiting` tasks for each, lets another worker hold
some of them, and measures one connection's claim (in a transaction rolled
back afterwards, so every repetition sees the same queue): wall time and
the CPU time of its Postgres backend (from /proc, so other load on the
machine matters less), per claim. Cases:

  unlimited           a flow without limits: the baseline
  flow limit 10       Flow(max_concurrency=10), 5 held: the claim takes 5
  flow limit, full    10 held: the claim takes nothing
  step limit 10       a step with max_concurrency=10 (5 held) beside an unlimited step
  flow limit 1000     1,000 held of a limit of 1,000 (the count is what grows)
  flow limit 10000    10,000 held of a limit of 10,000

and, for the design choice, what the alternative (a counter row per limited
flow, updated by every claim and every answer) would add to answers: two
connections committing single-row updates of one shared row, against each
its own row.

Prints the figures and writes bench/results/concurrency_limits.json.
Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
CLK_TCK = os.sysconf("SC_CLK_TCK")


def flows() -> list[Flow]:
    unlimited, flow_limit, step_limit, big, bigger = (
        Flow("b_unlimited"), Flow("b_flow_limit", max_concurrency=10), Flow("b_step_limit"),
        Flow("b_limit_1000", max_concurrency=1000), Flow("b_limit_10000", max_concurrency=10000))
    for flow in (unlimited, flow_limit, big, bigger):
        flow.step(slug="only")(lambda input: input)
    step_limit.step(slug="capped", max_concurrency=10)(lambda input: input)
    step_limit.step(slug="free")(lambda input: input)
    return [unlimited, flow_limit, step_limit, big, bigger]


def backend_cpu(pid: int) -> float:
    """Seconds of CPU the backend has used (utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def hold(conn: psycopg.Connection, flow: str, lane: str, count: int) -> None:
    """Lease `count` queued tasks of a flow's lane to a worker that never answers."""
    conn.execute("update pgflow.queue set lease_expires_at = now() + interval '1 hour', "
                 "token = 1, attempt = 1 where task_id in (select task_id from pgflow.queue "
                 "where flow_slug = %s and lane = %s and lease_expires_at is null limit %s)",
                 (flow, lane, count))


def measure(conn: psycopg.Connection, worker_id: uuid.UUID, flow: str, limit: int,
            repeat: int) -> dict[str, Any]:
    pid = conn.info.backend_pid
    local = Path(f"/proc/{pid}/stat").exists()
    walls, claimed = [], 0
    cpu_before = backend_cpu(pid) if local else 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        with conn.transaction(force_rollback=True):
            claimed = len(worker_api.claim(conn, worker_id, [flow], limit))
        walls.append(time.perf_counter() - started)
    cpu = (backend_cpu(pid) - cpu_before) / repeat if local else None
    return {"claimed": claimed, "wall_ms_median": statistics.median(walls) * 1000,
            "wall_ms_p90": sorted(walls)[int(len(walls) * 0.9)] * 1000,
            "backend_cpu_ms": None if cpu is None else cpu * 1000}


def counter_rows(dsn: str, seconds: float = 3.0) -> dict[str, float]:
    """Commits per second of two connections each updating a counter row in
    its own transaction (as each answer batch would): one shared row, or a
    row each. Durable commits, like answers."""
    with db.connect(dsn, "counter setup") as conn:
        conn.execute("create table bench_counter (id int primary key, n int not null)")
        conn.execute("insert into bench_counter values (1, 0), (2, 0)")
    rates = {}
    for label, rows in (("one shared row", (1, 1)), ("a row each", (1, 2))):
        done = [0, 0]
        stop = time.monotonic() + seconds

        def work(i: int, row: int, done: list[int] = done, stop: float = stop) -> None:
            with db.connect(dsn, "counter") as conn:
                while time.monotonic() < stop:
                    with conn.transaction():
                        conn.execute("update bench_counter set n = n + 1 where id = %s", (row,))
                        conn.execute("select pg_sleep(0.0005)")  # the rest of an answer batch
                    done[i] += 1

        threads = [threading.Thread(target=work, args=(i, row)) for i, row in enumerate(rows)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rates[label] = sum(done) / seconds
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "PGFLOW_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--waiting", type=int, default=100_000, help="tasks queued per flow")
    parser.add_argument("--repeat", type=int, default=300, help="claims measured per case")
    parser.add_argument("--claim", type=int, default=10, help="tasks asked for per claim")
    args = parser.parse_args()

    admin = psycopg.connect(args.database_url, autocommit=True)
    name = f"pgflow_bench_limits_{uuid.uuid4().hex[:8]}"
    admin.execute(f"create database {name}")
    dsn = make_conninfo(args.database_url, dbname=name)
    results: dict[str, Any] = {}
    try:
        with Client(dsn) as client:
            client.migrate()
            for flow in flows():
                client.register(flow)
                for start in range(0, args.waiting, 10_000):
                    client.start_flows(flow, [0] * min(10_000, args.waiting - start))
            conn = client.connection()
            conn.execute("vacuum analyze pgflow.queue")
            for flow, lane, count in (("b_flow_limit", "", 5), ("b_step_limit", "capped", 5),
                                      ("b_limit_1000", "", 1000), ("b_limit_10000", "", 10000)):
                hold(conn, flow, lane, count)
            worker = uuid.uuid4()
            worker_api.register_worker(conn, worker, "bench", 0, [])
            with db.connect(dsn, "bench claimer") as claimer:
                cases = [("unlimited", "b_unlimited"), ("flow limit 10, 5 held", "b_flow_limit"),
                         ("step limit 10, 5 held", "b_step_limit"),
                         ("flow limit 1000, 1000 held", "b_limit_1000"),
                         ("flow limit 10000, 10000 held", "b_limit_10000")]
                for label, flow in cases:
                    results[label] = measure(claimer, worker, flow, args.claim, args.repeat)
                hold(conn, "b_flow_limit", "", 5)
                results["flow limit 10, full"] = measure(claimer, worker, "b_flow_limit",
                                                         args.claim, args.repeat)
            counter = counter_rows(dsn)
    finally:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.close()

    print(f"{args.waiting:,} tasks waiting per flow; claims of {args.claim}, "
          f"{args.repeat} each (rolled back):")
    for label, r in results.items():
        cpu = "-" if r["backend_cpu_ms"] is None else f"{r['backend_cpu_ms']:.3f}"
        print(f"  {label:28} took {r['claimed']:3}  wall median {r['wall_ms_median']:.3f} ms, "
              f"p90 {r['wall_ms_p90']:.3f} ms, backend CPU {cpu} ms")
    print("the alternative, a counter row per limited flow: two connections committing "
          "updates, transactions/s:")
    for label, rate in counter.items():
        print(f"  {label:28} {rate:,.0f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "concurrency_limits.json").write_text(json.dumps(
        {"waiting": args.waiting, "claim": args.claim, "repeat": args.repeat,
         "machine": platform.node(), "cases": results, "counter_row": counter}, indent=2))


if __name__ == "__main__":
    main()
