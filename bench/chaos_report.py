"""The soak's checks of processes (leftovers, supervisors' exits, memory),
its figures (runs, tasks, faults, recovery times, machine load), and how
they are printed and written to JSON."""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import chaos_flows as cf
from chaos_check import Check, Facts, Verdicts, Window, orphan_cause, simple_check
from chaos_history import Database, Records

if TYPE_CHECKING:
    from chaos import Soak
    from chaos_faults import Fault

# Supervisor memory: the largest RSS in the soak's last quarter may exceed the
# largest in its second quarter (after warm-up) by this factor plus this much.
RSS_GROWTH = 1.25
RSS_ALLOWANCE_KIB = 16 * 1024


def facts(soak: Soak, args: argparse.Namespace) -> Facts:
    pauses, outages = [], []
    for fault in soak.faults.log:
        end = fault.ended_at or soak.timeline["faults_end"]
        if fault.kind == "supervisor_stop":
            pauses.append(Window(fault.at, end, fault.detail["pid"]))
        elif fault.kind == "postgres_restart":
            outages.append(Window(fault.at, end))
        elif fault.kind == "connection_drop" and fault.target == "executors":
            outages.append(Window(fault.at, fault.at))
    return Facts(runs=soak.producer.runs, pauses=pauses, outages=outages,
                 killed_executors=set(soak.faults.killed_executors),
                 supervisor_kills=[(f.detail["pid"], f.at) for f in soak.faults.log
                                   if f.kind == "supervisor_kill"],
                 kill_grace=args.kill_grace, slack=args.slack, strict=args.strict)


def process_checks(soak: Soak, leftovers: list[tuple[tuple[int, int], str]], records: Records,
                   facts: Facts) -> list[Check]:
    return [
        leftover_check(soak, leftovers, records, facts),
        simple_check("executors died with their killed supervisor (within 2 s)", soak.orphans,
                     sum(1 for f in soak.faults.log if f.kind == "supervisor_kill")),
        simple_check("no supervisor exited on its own; each stopped with 0 on TERM",
                     soak.unexpected_exits + soak.stop_problems, len(soak.supervisors)),
        memory_check(soak),
    ]


def leftover_check(soak: Soak, leftovers: list[tuple[tuple[int, int], str]], records: Records,
                   facts: Facts) -> Check:
    """Nothing left; a handler's child left by a known issue (its executor
    or supervisor SIGKILLed by the soak) is reported as that issue."""
    check = Check("no executor or handler's child left after the supervisors stopped",
                  checked=len(soak.executors_seen))
    parents = {i.grandchild: i for i in records.invocations if i.grandchild is not None}
    for process, problem in leftovers:
        parent = parents.get(process)
        known = orphan_cause(parent, facts) if parent is not None else None
        if known is not None:
            check.known_issue(known, problem, facts.strict)
        else:
            check.fail(problem)
    return check


def rss_peaks(soak: Soak) -> tuple[int, list[int]]:
    """Supervisor 0's samples (first incarnation), and its peak RSS (KiB) in
    each quarter of the soak (faults and recovery)."""
    start, end = soak.timeline["start"], soak.timeline["recovered"]
    samples = [(t, kib) for t, index, incarnation, kib in soak.rss if index == 0 and incarnation == 1]
    quarter = (end - start) / 4 or 1.0
    peaks = [0, 0, 0, 0]
    for t, kib in samples:
        q = min(max(int((t - start) / quarter), 0), 3)
        peaks[q] = max(peaks[q], kib)
    return len(samples), peaks


def memory_check(soak: Soak) -> Check:
    check = Check("supervisor memory (RSS of supervisor 0, never killed) did not keep growing")
    check.checked, peaks = rss_peaks(soak)
    second, last = peaks[1], peaks[3]
    if not second or not last:
        check.fail(f"too few samples of supervisor 0 ({check.checked}): did it restart?")
    elif last > second * RSS_GROWTH + RSS_ALLOWANCE_KIB:
        check.fail(f"RSS peaked at {second / 1024:.1f} MiB in the second quarter and "
                   f"{last / 1024:.1f} MiB in the last")
    return check


# -- figures -------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {"count": len(values), "median_s": round(statistics.median(values), 2),
            "max_s": round(max(values), 2)}


def recovery(soak: Soak, db: Database) -> dict[str, Any]:
    """Seconds from each fault to the system doing the thing again."""
    tag_of = {w: row["hostname"] for w, row in db.workers.items()}
    completions: dict[str, list[float]] = defaultdict(list)
    for task in db.tasks.values():
        if task["completed_at"] is not None and task["worker_id"] in tag_of:
            completions[tag_of[task["worker_id"]]].append(task["completed_at"])
    for times in completions.values():
        times.sort()

    def next_completion(tag: str, after: float) -> float | None:
        times = completions.get(tag, [])
        i = bisect.bisect_right(times, after)
        return times[i] - after if i < len(times) else None

    def registered(tag: str, after: float) -> float | None:
        starts = [row["started_at"] - after for row in db.workers.values()
                  if row["hostname"] == tag and row["started_at"] > after]
        return min(starts, default=None)

    requeues = _lease_requeues(db)
    out: dict[str, list[float]] = defaultdict(list)

    def note(fault: Fault, name: str, seconds: float) -> None:
        out[f"{fault.kind}: {name}"].append(seconds)
        fault.detail[f"{name} (s)"] = round(seconds, 2)  # shown per fault in the JSON

    for fault in soak.faults.log:
        if fault.kind in ("supervisor_kill", "supervisor_stop"):
            workers = {w for w, row in db.workers.items()
                       if row["hostname"] == fault.target and row["pid"] == fault.detail["pid"]}
            # Its leases run out within timeout + grace of the fault's end;
            # later expiries of this worker, or those after the next fault of
            # the same supervisor, belong to other faults.
            until = min([(fault.ended_at or fault.at) + cf.TIMEOUT + soak.args.lease_grace + 5.0]
                        + [f.at for f in soak.faults.log if f.target == fault.target
                           and f.at > fault.at and f.kind in ("supervisor_kill", "supervisor_stop")])
            lost = [at - fault.at for w in workers for at in requeues.get(w, [])
                    if fault.at < at < until]
            if lost:
                note(fault, "its tasks requeued (last)", max(lost))
        if fault.kind in ("supervisor_kill", "hup"):
            seconds = registered(fault.target, fault.at)
            if seconds is not None:
                note(fault, "serving again", seconds)
        if fault.kind == "postgres_restart" and fault.ended_at:
            waits = [next_completion(s.tag, fault.ended_at) for s in soak.supervisors]
            if all(w is not None for w in waits):
                note(fault, "every supervisor completing again",
                     max(w for w in waits if w is not None))
        if fault.kind == "connection_drop" and fault.target != "executors":
            seconds = next_completion(fault.target, fault.at)
            if seconds is not None:
                note(fault, "supervisor completing again", seconds)
    spread = {name: _spread(values) for name, values in sorted(out.items())}
    spread["all runs finished after faults stopped"] = {
        "seconds": round(soak.timeline["recovered"] - soak.timeline["faults_end"], 2),
        "bound_s": soak.args.recovery_seconds}
    return spread


def _lease_requeues(db: Database) -> dict[str, list[float]]:
    """Worker id -> when tasks it held were requeued after their lease expired."""
    found: dict[str, list[float]] = defaultdict(list)
    for task in db.tasks.values():
        for entry in task["errors"]:
            message = entry.get("error") or ""
            if message.startswith("Lease expired") and "(" in message:
                worker = message.rsplit("(", 1)[1].split(")", 1)[0]
                found[worker].append(entry["at_epoch"])
    return found


def figures(soak: Soak, db: Database, records: Records, verdicts: Verdicts) -> dict[str, Any]:
    runs = soak.producer.runs
    statuses = Counter(db.runs[r]["status"] if r in db.runs else "missing" for r in runs)
    doomed = sum(1 for r, run in runs.items() if cf.doomed(r, run.flow, run.input))
    executions = Counter(i.task for i in records.invocations)
    return {
        "runs": {"started": len(runs), **statuses, "doomed_by_plan": doomed,
                 "by_flow": dict(Counter(run.flow for run in runs.values())),
                 "map_elements": sum(run.input.get("size", 0) for run in runs.values())},
        "tasks": {"total": len(db.tasks), **Counter(t["status"] for t in db.tasks.values()),
                  "failed_attempts": sum(len(t["errors"]) for t in db.tasks.values())},
        "invocations": {"total": len(records.invocations),
                        "by_plan": dict(Counter(i.plan for i in records.invocations)),
                        "tasks_run_more_than_once": sum(1 for n in executions.values() if n > 1),
                        "record_lines": records.lines, "torn_lines": records.bad_lines},
        "failed_attempts_by_cause": dict(verdicts.kinds.most_common()),
        "faults": dict(Counter(f.kind for f in soak.faults.log)),
        "postgres_restarts_by_mode": dict(Counter(
            f.target for f in soak.faults.log if f.kind == "postgres_restart")),
        "recovery": recovery(soak, db),
        "supervisor_rss_mib": _rss_summary(soak),
        "supervisor_0_rss_peak_by_quarter_mib": [round(kib / 1024, 1) for kib in rss_peaks(soak)[1]],
        "producer_errors": soak.producer.errors,
        "machine": {"cpus": os.cpu_count(), "load_1min_mean": round(statistics.mean(soak.load), 2)
                    if soak.load else None, "load_1min_max": max(soak.load, default=None)},
    }


def _rss_summary(soak: Soak) -> dict[str, Any]:
    by: dict[str, list[int]] = defaultdict(list)
    for _, index, incarnation, kib in soak.rss:
        by[f"supervisor {index} #{incarnation}"].append(kib)
    return {name: {"first": round(v[0] / 1024, 1), "last": round(v[-1] / 1024, 1),
                   "max": round(max(v) / 1024, 1), "samples": len(v)}
            for name, v in by.items() if len(v) >= 5}


def build(args: argparse.Namespace, soak: Soak, db: Database, records: Records,
          checks: list[Check], verdicts: Verdicts) -> dict[str, Any]:
    return {
        "benchmark": "chaos",
        "ok": all(c.ok for c in checks),
        "settings": {k: str(v) if k == "out" else v for k, v in vars(args).items()},
        "timeline": {k: round(v - soak.timeline["start"], 2) for k, v in soak.timeline.items()},
        "invariants": [{"name": c.name, "ok": c.ok, "checked": c.checked, "failures": c.failures,
                        "problems": c.problems, "known_issues": dict(c.known)} for c in checks],
        "figures": figures(soak, db, records, verdicts),
        "faults_log": [f.as_dict() for f in soak.faults.log],
    }


def show(result: dict[str, Any]) -> None:
    figures = result["figures"]
    print(f"\nruns: {figures['runs']}")
    print(f"tasks: {figures['tasks']}")
    print(f"invocations: {figures['invocations']}")
    print(f"failed attempts by cause: {figures['failed_attempts_by_cause']}")
    print(f"faults: {figures['faults']} (Postgres restarts: {figures['postgres_restarts_by_mode']})")
    print("recovery:")
    for name, value in figures["recovery"].items():
        print(f"  {name}: {value}")
    print(f"supervisor RSS (MiB): {figures['supervisor_rss_mib']}; supervisor 0's peak by "
          f"quarter of the soak: {figures['supervisor_0_rss_peak_by_quarter_mib']}")
    print(f"machine: {figures['machine']}; producer errors (outages): {figures['producer_errors']}")
    print("\ninvariants:")
    for check in result["invariants"]:
        mark = "ok  " if check["ok"] else "FAIL"
        print(f"  {mark} {check['name']} ({check['checked']} checked"
              f"{', ' + str(check['failures']) + ' failures' if check['failures'] else ''})")
        for problem in check["problems"][:10]:
            print(f"         - {problem}")
        for test, times in check["known_issues"].items():
            print(f"         known issue seen {times}x (not counted without --strict): {test}")
    print("\nALL INVARIANTS HOLD" if result["ok"] else "\nINVARIANTS FAILED")
