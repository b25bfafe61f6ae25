"""pgflow against PgQueuer, side by side in one run, on this machine's Postgres.

    python bench/vs_pgqueuer.py [--database-url URL] [--jobs 20000] [--rounds 2]
                                [--only drain,chains,latency,cpu] [--supervisor-arg ARG ...]

Needs the bench extra (`pip install -e '.[dev,bench]'`: PgQueuer 1.6 and asyncpg).
Creates two scratch databases (one per side) and drops them afterwards. Cases:

  drain     JOBS pre-filled single-step no-op jobs; ours: `pgflow supervise
            --processes 2` with default settings; theirs: two PgQueuer worker
            processes with batch size 100 and a no-op async entrypoint. Rounds
            alternate (ours, theirs, ours, ...). Prints tasks/s per round, the
            medians and ours / theirs (target >= 1.5), and where the CPU goes
            (supervisor, executors, PgQueuer workers, their Postgres backends).
  chains    JOBS/3 pre-filled three-step chains a -> b -> c through ours, each
            round paired with a drain round of ours: chains/s and chains/s /
            (single-step tasks/s / 3) (target >= 1).
  latency   start -> handler start on an idle system, p50/p99 ms, both sides.
  cpu       handlers burning ~20 ms of pure-Python CPU: ours with --processes 2
            against --processes 1 (target >= 1.8).

Timing, identical for both sides: the workers are started and ready (ours says
READY=1 through sd_notify, PgQueuer's workers have issued LISTEN) before the
queue is filled in one transaction; the time is from the first task picked to
the last one done, from the rows' timestamps (pgflow.tasks.started_at /
completed_at; pgqueuer_log's 'picked' / 'successful' rows); the benchmark polls
a count every 0.1 s only to know when to stop. Writes
bench/results/vs_pgqueuer.json; the processes' output goes to
bench/results/vs_pgqueuer-*.log. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import psycopg
import vs_cases
import vs_report
from vs_db import scratch_database, server_info
from vs_ours import Ours
from vs_processes import BenchTimeout, install_cleanup
from vs_theirs import BATCH_SIZE, PgQueuerSide

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CASES = ("drain", "chains", "latency", "cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "PGFLOW_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
        help="a server where this role may create databases (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=20_000,
                        help="jobs per drain round; chains run a third as many (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds per side and case (default: %(default)s)")
    parser.add_argument("--only", default=",".join(CASES),
                        help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--supervisor-arg", action="append", default=[], metavar="ARG",
                        help="extra `pgflow supervise` argument for experiments (repeatable; "
                        "use --supervisor-arg=--prefetch=256); the default run passes none")
    parser.add_argument("--latency-samples", type=int, default=300, help="per round (default: %(default)s)")
    parser.add_argument("--cpu-tasks", type=int, default=600,
                        help="tasks per CPU-bound round (default: %(default)s)")
    parser.add_argument("--pgqueuer-driver", choices=("asyncpg", "psycopg"), default="asyncpg",
                        help="PgQueuer's driver (default: %(default)s, as in PgQueuer's own benchmark)")
    args = parser.parse_args()
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(args.only) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    return args


def machine_info() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_average_at_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "hostname": platform.node()}


def git_commit() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=HERE, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "..") else "")


def report_round(case: str, figures: dict) -> None:
    print(vs_report.round_line(case, figures), flush=True)


def run_cases(args: argparse.Namespace, ours: Ours, theirs: PgQueuerSide, results: dict) -> None:
    if "drain" in args.only:
        results["drain"] = vs_cases.drain([ours, theirs], args.jobs, args.rounds, report_round)
    if "chains" in args.only:
        results["chains"] = vs_cases.chains(ours, args.jobs, args.rounds, report_round)
    if "latency" in args.only:
        results["latency"] = vs_cases.latency([ours, theirs], args.latency_samples, args.rounds,
                                              report_round)
    if "cpu" in args.only:
        results["cpu_bound"] = vs_cases.cpu_bound(ours, args.cpu_tasks, args.rounds, report_round)


def main() -> None:
    args = parse_args()
    install_cleanup()
    RESULTS.mkdir(exist_ok=True)
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        postgres = server_info(conn)
    results: dict = {
        "benchmark": "vs_pgqueuer", "command": " ".join(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "postgres": postgres,
        "settings": {"jobs": args.jobs, "rounds": args.rounds, "cases": args.only,
                     "supervisor_args": args.supervisor_arg, "pgflow_commit": git_commit(),
                     "pgqueuer_version": version("pgqueuer"), "pgqueuer_driver": args.pgqueuer_driver,
                     "pgqueuer_processes": 2, "pgqueuer_batch_size": BATCH_SIZE,
                     "poll_interval_seconds": vs_cases.POLL_INTERVAL, "settle_seconds": vs_cases.SETTLE},
        "pg_stat_statements": (
            "pg_stat_statements is loaded, but this benchmark does not read it yet"
            if postgres["pg_stat_statements"] else
            "pg_stat_statements: not in shared_preload_libraries on this server, so no per-statement "
            "figures (the server's configuration is left alone)"),
    }
    print(vs_report.header(results), flush=True)
    tag = f"{os.getpid()}"
    with scratch_database(args.database_url, f"vs_pgqueuer_ours_{tag}") as ours_dsn, \
         scratch_database(args.database_url, f"vs_pgqueuer_theirs_{tag}") as theirs_dsn:
        ours = Ours(ours_dsn, RESULTS, args.supervisor_arg)
        theirs = PgQueuerSide(theirs_dsn, RESULTS, args.pgqueuer_driver)
        try:
            ours.setup()
            theirs.setup()
            run_cases(args, ours, theirs, results)
        finally:
            ours.close()
            theirs.close()
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print()
    print(vs_report.summary(results))
    out = RESULTS / "vs_pgqueuer.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the processes it started are stopped and its scratch databases dropped")
    except (BenchTimeout, RuntimeError) as exc:
        sys.exit(f"vs_pgqueuer: {exc}")
