"""The soak's invariants, each a function of the histories (handlers'
records, Postgres at the end) and of what the soak did (faults, samples).
A Check collects what it looked at and every problem it found."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import chaos_flows as cf
from chaos_history import Database, Invocation, Records, TaskKey
from chaos_load import StartedRun

PLANNED = re.compile(r"chaos: planned (raise|doom) at attempt (\d+)")
CRASH = re.compile(r"Executor process (\d+) (?:was killed by (\w+)|exited with code (\d+))")
TIMEOUT = "Task timed out after"
LEASE = "Lease expired after"
EPSILON = 0.005  # seconds: float conversions of timestamps


# Problems the system is known to have, each pinned by a test that fails
# (xfail) until it is fixed; the soak reports them, and fails on them only
# with --strict.
ORPHANED_GRANDCHILD = ("tests/e2e/test_chaos_findings.py::"
                       "test_what_a_handler_forked_dies_with_a_killed_supervisor")


@dataclass
class Check:
    name: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    failures: int = 0
    known: Counter[str] = field(default_factory=Counter)  # known issue -> times seen

    def fail(self, problem: str) -> None:
        self.failures += 1
        if len(self.problems) < 20:
            self.problems.append(problem)

    def known_issue(self, test: str, problem: str, strict: bool) -> None:
        self.known[test] += 1
        if strict:
            self.fail(f"{problem} (known: {test})")

    @property
    def ok(self) -> bool:
        return self.failures == 0


@dataclass
class Window:
    """When something was broken: a paused supervisor (pid), a Postgres outage
    or dropped executor connections (pid None)."""

    start: float
    end: float
    pid: int | None = None

    def overlaps(self, start: float, end: float, slack: float) -> bool:
        return start <= self.end + slack and end >= self.start - slack


@dataclass
class Facts:
    """What the soak did and saw, besides the two histories."""

    runs: dict[uuid.UUID, StartedRun]
    pauses: list[Window]  # SIGSTOP .. SIGCONT of a supervisor, by its pid
    outages: list[Window]  # Postgres down, executors' connections dropped
    killed_executors: set[tuple[int, int]]  # (pid, start time) of executors the soak SIGKILLed
    supervisor_kills: list[tuple[int, float]]  # (pid, when) of each SIGKILL of a supervisor
    kill_grace: float
    slack: float
    strict: bool = False


@dataclass
class Verdicts:
    """Every error entry in pgflow.tasks, classified."""

    kinds: Counter[str] = field(default_factory=Counter)
    injected_by_task: Counter[TaskKey] = field(default_factory=Counter)


def plan_of(key: TaskKey, flow: str, attempt: int) -> str:
    run, step, index = key
    return cf.behaviour(run, flow, step, index, attempt)


def delay_after(attempt: int) -> float:
    return min(cf.BASE_DELAY * 2 ** (attempt - 1), 3600.0)


def _invocations(records: Records, key: TaskKey, attempt: int) -> list[Invocation]:
    return [i for i in records.by_task.get(key, []) if i.attempt == attempt]


def _killed(facts: Facts, pid: int, runs: list[Invocation]) -> bool:
    """The soak SIGKILLed executor `pid` while it ran this attempt (by pid
    alone when the handler had not recorded its start yet)."""
    mine = [i for i in runs if i.pid == pid]
    if mine:
        return any((i.pid, i.starttime) in facts.killed_executors for i in mine)
    return any(p == pid for p, _ in facts.killed_executors)


def _paused(facts: Facts, pid: int, start: float, end: float) -> bool:
    return any(w.pid == pid and w.overlaps(start, end, facts.slack) for w in facts.pauses)


# -- error entries -------------------------------------------------------------------------


def classify(key: TaskKey, task: dict[str, Any], entry: dict[str, Any], records: Records,
             facts: Facts) -> str:
    """planned:<kind>, injected:<kind>, or unexplained:<why> for one failed attempt."""
    attempt, message = entry["attempt"], entry.get("error") or ""
    plan = plan_of(key, task["flow_slug"], attempt)
    runs = _invocations(records, key, attempt)
    if match := PLANNED.search(message):
        if int(match[2]) != attempt or match[1] != plan:
            return f"unexplained:error of attempt {match[2]} ({match[1]}) recorded as attempt {attempt}"
        if not any(i.outcome == "r" for i in runs):
            return "unexplained:a planned raise with no recorded invocation"
        return f"planned:{plan}"
    if message.startswith(TIMEOUT):
        if plan in cf.OVERRUNS:
            return "planned:timeout"
        if any(_paused(facts, i.ppid, i.start, i.start + cf.TIMEOUT) for i in runs):
            return "injected:timeout while its supervisor was paused"
        return f"unexplained:timed out, planned {plan}"
    if match := CRASH.search(message):
        pid, signal_name, code = int(match[1]), match[2], match[3]
        if plan == cf.EXIT and code == str(cf.EXIT_CODE) or plan == cf.SIGKILL and signal_name == "SIGKILL":
            return f"planned:{plan}"
        if signal_name == "SIGKILL" and _killed(facts, pid, runs):
            return "injected:executor killed"
        return f"unexplained:executor {pid} died ({signal_name or 'exit ' + str(code)}), planned {plan}"
    if message.startswith(LEASE):
        return "injected:lease expired"
    if any(w.overlaps(i.start, i.end, 2.0) for i in runs for w in facts.outages):
        return "injected:database unavailable"
    return f"unexplained:{message[:120]}"


def check_errors(db: Database, records: Records, facts: Facts) -> tuple[Check, Verdicts]:
    """Attempts numbered 1..n without gaps; each failed attempt's entry
    explained by the plan or by an injected fault."""
    check = Check("each task's attempts and errors match its plan and the records")
    verdicts = Verdicts()
    for key, task in db.tasks.items():
        check.checked += 1
        numbers = [e["attempt"] for e in task["errors"]]
        expected = {"completed": [task["attempt"] - 1], "failed": [task["attempt"]],
                    "cancelled": [task["attempt"] - 1, task["attempt"]]}.get(task["status"], [])
        if numbers != list(range(1, len(numbers) + 1)) or len(numbers) not in expected:
            check.fail(f"task {key} ({task['status']}, attempt {task['attempt']}): error entries "
                       f"for attempts {numbers}")
        if task["status"] == "failed" and task["attempt"] != cf.MAX_ATTEMPTS:
            check.fail(f"task {key} failed after {task['attempt']} of {cf.MAX_ATTEMPTS} attempts")
        for entry in task["errors"]:
            verdict = classify(key, task, entry, records, facts)
            verdicts.kinds[verdict.split(":", 1)[0] + ":" + verdict.split(":", 1)[1][:40]] += 1
            if verdict.startswith("unexplained"):
                check.fail(f"task {key} attempt {entry['attempt']}: {verdict[12:]}: "
                           f"{(entry.get('error') or '')[:160]!r}")
            elif verdict.startswith("injected"):
                verdicts.injected_by_task[key] += 1
    return check, verdicts


# -- runs -------------------------------------------------------------------------------------


def check_finished(db: Database, facts: Facts) -> Check:
    check = Check("every run completed or failed within the recovery bound")
    for run_id, run in facts.runs.items():
        check.checked += 1
        row = db.runs.get(run_id)
        if row is None:
            check.fail(f"run {run_id} ({run.flow}) is not in pgflow.runs")
        elif row["status"] not in ("completed", "failed"):
            check.fail(f"run {run_id} ({run.flow}) is {row['status']}")
    for run_id in set(db.runs) - set(facts.runs):
        check.fail(f"pgflow.runs holds run {run_id}, which the soak never started")
    if db.queue_rows:
        check.fail(f"pgflow.queue still holds {db.queue_rows} rows")
    return check


def check_outputs(db: Database, facts: Facts, verdicts: Verdicts) -> Check:
    """Completed runs output what a pure re-computation gives (step by step);
    doomed runs failed; other failed runs failed of injected faults."""
    check = Check("completed runs' outputs equal a pure re-computation; failures are planned or "
                  "injected")
    for run_id, run in facts.runs.items():
        row = db.runs.get(run_id)
        if row is None:
            continue
        check.checked += 1
        doom = cf.doomed(run_id, run.flow, run.input)
        if row["status"] == "completed":
            if doom is not None:
                check.fail(f"run {run_id}: completed, but its plan dooms {doom}")
            if row["output"] != cf.expected_output(run.flow, run.input):
                check.fail(f"run {run_id} ({run.flow}): output {str(row['output'])[:80]} != "
                           f"{cf.expected_output(run.flow, run.input)}")
            for step, _ in cf.STEPS[run.flow]:
                state = db.step_states.get((str(run_id), step), {})
                if state.get("output") != cf.expected_step_output(run.flow, run.input, step):
                    check.fail(f"run {run_id}: step {step} output {str(state.get('output'))[:80]}")
        elif row["status"] == "failed":
            failing = [(str(run_id), t["step_slug"], t["task_index"])
                       for step, _ in cf.STEPS[run.flow]
                       for t in db.by_step.get((str(run_id), step), []) if t["status"] == "failed"]
            if not failing:
                check.fail(f"run {run_id}: failed ({row['error']}) with no failed task")
            elif ((doom is None or row["failed_step"] != doom[0])
                  and not any(verdicts.injected_by_task[k] for k in failing)):
                check.fail(f"run {run_id}: failed at {row['failed_step']} with no injected "
                           f"fault to blame (plan dooms {doom}): {row['error']}")
    return check


def check_completed_once(db: Database, records: Records, facts: Facts) -> Check:
    """A completed task's output comes from one accepted attempt: the
    attempt Postgres kept was recorded ending well in an executor of the
    worker that answered; no attempt beyond it ever ran; the step and run
    bookkeeping counts each task once."""
    check = Check("no task completed twice; the accepted attempt ran, in the worker that answered")
    worker_pids = {w: row["pid"] for w, row in db.workers.items()}
    for key, task in db.tasks.items():
        check.checked += 1
        invocations = records.by_task.get(key, [])
        beyond = [i.attempt for i in invocations if i.attempt > task["attempt"]]
        if beyond:
            check.fail(f"task {key} ({task['status']}, attempt {task['attempt']}): attempts "
                       f"{beyond} ran")
        if task["status"] != "completed":
            continue
        pid = worker_pids.get(task["worker_id"])
        accepted = [i for i in _invocations(records, key, task["attempt"])
                    if i.outcome == "o" and (pid is None or i.ppid == pid)]
        if not accepted:
            check.fail(f"task {key}: completed by attempt {task['attempt']} of worker "
                       f"{task['worker_id']} (pid {pid}), which no executor of it recorded ending well")
    for (run, step), state in db.step_states.items():
        tasks = db.by_step.get((run, step), [])
        if state["status"] == "completed" and (
                state["remaining_tasks"] != 0 or len(tasks) != state["task_count"]
                or any(t["status"] != "completed" for t in tasks)):
            check.fail(f"step {run}/{step}: completed with remaining_tasks "
                       f"{state['remaining_tasks']}, task_count {state['task_count']}, tasks "
                       f"{Counter(t['status'] for t in tasks)}")
    for key in set(records.by_task) - set(db.tasks):
        check.fail(f"invocations recorded for {key}, a task pgflow.tasks does not hold")
    return check


def check_backoff(db: Database, records: Records) -> Check:
    """No retry started before its failure's time + base_delay * 2^(attempt-1),
    and the retry's visible_at is exactly that."""
    check = Check("retries respected backoff")
    for key, task in db.tasks.items():
        for entry in task["errors"]:
            at, attempt = entry["at_epoch"], entry["attempt"]
            due = at + delay_after(attempt)
            for retry in _invocations(records, key, attempt + 1):
                check.checked += 1
                if retry.start < due - EPSILON:
                    check.fail(f"task {key}: attempt {attempt + 1} started "
                               f"{due - retry.start:.3f}s before its backoff ended")
        if task["status"] == "completed" and task["errors"]:
            last = task["errors"][-1]
            check.checked += 1
            if abs(task["visible_at"] - last["at_epoch"] - delay_after(last["attempt"])) > EPSILON:
                check.fail(f"task {key}: visible_at {task['visible_at'] - last['at_epoch']:.3f}s "
                           f"after failure {last['attempt']}, expected {delay_after(last['attempt'])}")
    return check


def orphan_cause(invocation: Invocation, facts: Facts) -> str | None:
    """The known issue that leaves what this invocation forked alive, if the
    soak SIGKILLed its supervisor while it ran. (An executor killed from
    outside is reaped by its supervisor, which kills the executor's whole
    process group, so what a handler forked there must not outlive it.)"""
    if any(pid == invocation.ppid and invocation.start <= at <= invocation.end + 1.0
           for pid, at in facts.supervisor_kills):
        return ORPHANED_GRANDCHILD
    return None


def check_timeouts(records: Records, facts: Facts) -> Check:
    """No handler ran past timeout + kill grace + slack (unless its supervisor
    was paused meanwhile, when nothing can kill it), and nothing a handler
    forked outlived it."""
    check = Check("timeouts enforced within the grace; nothing a handler forked outlived it")
    limit = cf.TIMEOUT + facts.kill_grace + facts.slack
    for invocation in records.invocations:
        check.checked += 1
        if invocation.seconds > limit and not _paused(facts, invocation.ppid, invocation.start,
                                                      invocation.end):
            check.fail(f"{invocation.task} attempt {invocation.attempt} ({invocation.plan}) ran "
                       f"{invocation.seconds:.2f}s in executor {invocation.pid}, limit {limit:.2f}s")
        if invocation.grandchild is not None:
            last = records.grandchild_last_tick.get(invocation.grandchild)
            if last is not None and last - invocation.end > facts.slack:
                problem = (f"{invocation.task} attempt {invocation.attempt}: grandchild "
                           f"{invocation.grandchild[0]} ticked {last - invocation.end:.2f}s after "
                           f"its executor {invocation.pid} last did")
                known = orphan_cause(invocation, facts)
                if known is not None:
                    check.known_issue(known, problem, facts.strict)
                else:
                    check.fail(problem)
    return check


def all_checks(db: Database, records: Records, facts: Facts) -> tuple[list[Check], Verdicts]:
    errors, verdicts = check_errors(db, records, facts)
    return [check_finished(db, facts), check_outputs(db, facts, verdicts),
            check_completed_once(db, records, facts), errors, check_backoff(db, records),
            check_timeouts(records, facts)], verdicts


def simple_check(name: str, problems: Iterable[str], checked: int) -> Check:
    check = Check(name, checked=checked)
    for problem in problems:
        check.fail(problem)
    return check
