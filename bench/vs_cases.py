"""The cases of bench/vs_pgqueuer.py. Every timed round does the same on
either side: empty the tables, start the workers and wait until they say they
are ready, fill the queue in one transaction, poll until everything is
finished, and take the time from the first pick to the last completion from
the rows' own timestamps."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import psycopg
from bench_flows import spin
from vs_cpu import CpuGroups, bench_cpu, machine_cpu, snapshot, spent
from vs_ours import Ours
from vs_processes import BenchTimeout, Child, wait_until

POLL_INTERVAL = 0.1  # seconds between "how many are finished?" queries, both sides
SETTLE = 1.0  # seconds between "ready" and the fill, both sides
STALL_TIMEOUT = 60.0  # seconds without progress before a round is abandoned
LATENCY_WARMUP = 10  # samples thrown away at the start of each latency round
LATENCY_PAUSE = 0.01  # seconds between a finished sample and the next start
CPUS = os.cpu_count() or 1


class Workers(Protocol):
    children: list[Child]

    def cpu_groups(self) -> CpuGroups: ...


class Side(Protocol):
    """What vs_ours.Ours and vs_theirs.PgQueuerSide both offer."""

    name: str
    log_path: Path
    tasks_per_run: dict[str, int]
    conn: psycopg.Connection  # the benchmark's own: fills and polls

    def reset(self) -> None: ...
    def workers(self, processes: int) -> AbstractContextManager[Workers]: ...
    def fill(self, workload: str, count: int) -> None: ...
    def finished(self, workload: str) -> int: ...
    def window(self, workload: str) -> dict[str, float | int]: ...
    def dead_tuples(self) -> dict[str, dict[str, int]]: ...
    def latency_samples(self, samples: int, warmup: int, pause: float) -> list[float]: ...


Report = Callable[[str, dict], None]


def timed_round(side: Side, workload: str, count: int, processes: int) -> dict:
    side.reset()
    own_backend = side.conn.info.backend_pid
    with side.workers(processes) as workers:
        time.sleep(SETTLE)
        before = snapshot(workers.cpu_groups())
        machine_before, bench_before, started = machine_cpu(), bench_cpu(own_backend), time.monotonic()
        side.fill(workload, count)
        filled = time.monotonic()
        seen = _wait_finished(side, workload, count, workers.children)
        used = spent(before, snapshot(workers.cpu_groups()))
        machine = machine_cpu() - machine_before
        bench = bench_cpu(own_backend) - bench_before
        elapsed = time.monotonic() - started
    wait_until(lambda: not workers.cpu_groups().roles["postgres backends"], 10,
               f"{side.name}: backends closing")
    window = side.window(workload)
    tasks = count * side.tasks_per_run[workload]
    if window["not_completed"] or window["attempts"] != tasks:
        raise RuntimeError(f"{side.name} {workload}: {window['not_completed']} of {count} did not "
                           f"complete, {window['attempts']} attempts for {tasks} tasks; "
                           f"see {side.log_path}")
    seconds = float(window["seconds"])
    others = max(machine - sum(used.values()) - bench, 0.0)
    return {
        "runs": count, "tasks": tasks, "processes": processes,
        "seconds": round(seconds, 3),
        "tasks_per_second": round(tasks / seconds, 1),
        "runs_per_second": round(count / seconds, 1),
        "fill_seconds": round(filled - started, 3),
        "fill_returned_to_seen_done_seconds": round(seen - filled, 3),
        "cpu_seconds": {role: round(v, 3) for role, v in used.items()},
        "cpu_us_per_task": {role: round(v / tasks * 1e6, 1) for role, v in used.items()},
        "cores_busy": {role: round(v / seconds, 2) for role, v in used.items()},
        # From just before the fill to the end: the whole machine, the
        # benchmark itself (filling and polling, with its backend), and the
        # rest: other people's work on this shared box, Postgres' background
        # processes. A busy rest means a noisy round.
        "machine_busy_cpu_seconds": round(machine, 2),
        "bench_cpu_seconds": round(bench, 2),
        "others_busy_percent": round(others / (elapsed * CPUS) * 100, 1),
        "dead_tuples_after": side.dead_tuples(),
    }


def _wait_finished(side: Side, workload: str, count: int, children: list[Child]) -> float:
    """Poll until `count` are finished; the monotonic time it was seen."""
    last, progressed = -1, time.monotonic()
    while True:
        done = side.finished(workload)
        now = time.monotonic()
        if done >= count:
            return now
        if done != last:
            last, progressed = done, now
        elif now - progressed > STALL_TIMEOUT:
            raise BenchTimeout(f"{side.name} {workload}: {done} of {count} finished and no progress "
                               f"for {STALL_TIMEOUT:.0f}s; see {side.log_path}")
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{side.name} {workload}: {child.describe_exit()}")
        time.sleep(POLL_INTERVAL)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def drain(sides: list[Side], jobs: int, rounds: int, report: Report) -> dict:
    """Single-step no-op jobs, pre-filled; 2 processes each; sides alternate."""
    results: list[dict] = []
    for number in range(1, rounds + 1):
        for side in sides:
            figures = {"side": side.name, "round": number, **timed_round(side, "noop", jobs, 2)}
            report("drain", figures)
            results.append(figures)
    medians = {s.name: median([r["tasks_per_second"] for r in results if r["side"] == s.name])
               for s in sides}
    summary: dict = {"jobs": jobs, "rounds": results, "median_tasks_per_second": medians}
    if len(sides) == 2:
        summary["ratio_ours_over_pgqueuer"] = round(medians["ours"] / medians["pgqueuer"], 2)
        summary["target_ratio"] = 1.5
    return summary


def chains(ours: Ours, jobs: int, rounds: int, report: Report) -> dict:
    """Three-step chains a -> b -> c (jobs / 3 of them, pre-filled) through
    ours, each round right after a drain round of ours with `jobs` single-step
    runs: a chain should cost no more than three single tasks, and pairing the
    two keeps the ratio clear of the load other users put on the machine."""
    count = round(jobs / 3)
    results = []
    for number in range(1, rounds + 1):
        single = {"side": ours.name, "round": number, **timed_round(ours, "noop", jobs, 2)}
        report("single", single)
        figures = {"side": ours.name, "round": number, **timed_round(ours, "chain", count, 2)}
        figures["chains_per_second"] = figures.pop("runs_per_second")
        figures["paired_single_tasks_per_second"] = single["tasks_per_second"]
        figures["paired_single_others_busy_percent"] = single["others_busy_percent"]
        figures["chains_over_single_thirds"] = round(
            figures["chains_per_second"] / (single["tasks_per_second"] / 3), 2)
        report("chains", figures)
        results.append(figures)
    return {
        "chains": count, "rounds": results,
        "median_chains_per_second": median([r["chains_per_second"] for r in results]),
        "median_chains_over_single_thirds": round(
            statistics.median(r["chains_over_single_thirds"] for r in results), 2),
        "target": 1.0,
    }


def latency(sides: list[Side], samples: int, rounds: int, report: Report) -> dict:
    """Start -> handler start on an idle system, one job at a time; sides alternate."""
    results: list[dict] = []
    pooled: dict[str, list[float]] = {s.name: [] for s in sides}
    for number in range(1, rounds + 1):
        for side in sides:
            side.reset()
            with side.workers(2):
                time.sleep(SETTLE)
                values = side.latency_samples(samples, LATENCY_WARMUP, LATENCY_PAUSE)
            pooled[side.name] += values
            figures = {"side": side.name, "round": number, **percentiles(values)}
            report("latency", figures)
            results.append(figures)
    return {"samples_per_round": samples, "warmup_per_round": LATENCY_WARMUP, "rounds": results,
            "pooled": {name: percentiles(values) for name, values in pooled.items()},
            "target_p50_ms": 2.0, "target_p99_ms": 5.0}


def percentiles(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"samples": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 2)}


def cpu_bound(ours: Ours, tasks: int, rounds: int, report: Report) -> dict:
    """Handlers burning ~20 ms of CPU: --processes 2 against --processes 1, alternating."""
    iterations, burn_ms = calibrate_burn(0.020)
    ours.burn_iterations = iterations
    results = []
    for number in range(1, rounds + 1):
        for processes in (2, 1):
            figures = {"side": ours.name, "round": number, **timed_round(ours, "cpu", tasks, processes)}
            report("cpu-bound", figures)
            results.append(figures)
    medians = {p: median([r["tasks_per_second"] for r in results if r["processes"] == p]) for p in (2, 1)}
    return {"tasks": tasks, "burn_iterations": iterations, "burn_ms_idle_core": burn_ms,
            "rounds": results, "median_tasks_per_second": {f"processes_{p}": v for p, v in medians.items()},
            "ratio_2_over_1": round(medians[2] / medians[1], 2), "target_ratio": 1.8}


def calibrate_burn(seconds: float) -> tuple[int, float]:
    """Iterations of bench_flows.spin that take `seconds` of CPU here (the
    fastest of several tries, since the machine is shared), and the check."""
    probe = 200_000

    def cost(iterations: int) -> float:
        started = time.thread_time()
        spin(iterations)
        return time.thread_time() - started

    iterations = int(probe * seconds / min(cost(probe) for _ in range(5)))
    return iterations, round(min(cost(iterations) for _ in range(5)) * 1000, 1)
