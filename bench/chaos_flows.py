"""The flows the chaos soak (bench/chaos.py) runs, and the pure functions
that say what each invocation does and what each run must output.

Everything a handler does is decided by `behaviour(run_id, step, index,
attempt)`, a hash of its arguments: the soak computes the same plan from the
run ids it started, so it knows which runs must fail, which attempts must
raise, crash or overrun, and what every completed run must output.

Each invocation is recorded outside the system under test: one JSON line
per event, appended with a single write(2) to a file per executor process
under $CHAOS_RECORD_DIR (an executor closes every descriptor it inherits,
so each process opens its own).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from pgflow import Context, Flow

# Plans: what one invocation does.
OK = "ok"
RAISE = "raise"
EXIT = "exit"  # os._exit(EXIT_CODE)
SIGKILL = "sigkill"  # the handler SIGKILLs its own process
OVERRUN_SOFT = "overrun_soft"  # sleeps in Python: the in-child soft timeout interrupts it
OVERRUN_HARD = "overrun_hard"  # blocks SIGALRM: only the supervisor's SIGKILL ends it
OVERRUN_FORK = "overrun_fork"  # overrun_hard, after forking a grandchild that ticks too
DOOM = "doom"  # raises on every attempt: the run must fail
OVERRUNS = (OVERRUN_SOFT, OVERRUN_HARD, OVERRUN_FORK)
CRASHES = (EXIT, SIGKILL)

EXIT_CODE = 13
MAX_ATTEMPTS = 5
BASE_DELAY = 0.2
TIMEOUT = 1.0
# Planned faults only hit attempts up to this one, so a run whose plan is not
# doomed has MAX_ATTEMPTS - PLANNED_ATTEMPTS attempts left for injected faults.
PLANNED_ATTEMPTS = 2
DOOMED_RUNS = 0.08
TICK = 0.1  # overrunning handlers record a tick this often
GRANDCHILD_SECONDS = 20.0  # a grandchild left alive ends by itself after this

# Per attempt (up to PLANNED_ATTEMPTS), the chance of each planned fault.
SINGLE_RATES = ((RAISE, 0.08), (EXIT, 0.015), (SIGKILL, 0.015), (OVERRUN_SOFT, 0.012),
                (OVERRUN_HARD, 0.008), (OVERRUN_FORK, 0.005))
MAP_RATES = ((RAISE, 0.01), (EXIT, 0.0008), (SIGKILL, 0.0008), (OVERRUN_SOFT, 0.0004),
             (OVERRUN_HARD, 0.0003), (OVERRUN_FORK, 0.0002))
MAP_SIZES = 500

RUN_NAMESPACE = uuid.UUID("6f1d7c1e-3c55-4f0e-9a57-0c4a1b2d9e11")

STEPS = {
    "chaos_chain": (("a", False), ("b", False), ("c", False)),
    "chaos_diamond": (("a", False), ("b", False), ("c", False), ("d", False)),
    "chaos_map": (("plan", False), ("square", True), ("total", False)),
}


# -- the plan (pure) ---------------------------------------------------------------


def draw(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by `parts`."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def run_id_for(seed: int, number: int) -> uuid.UUID:
    return uuid.uuid5(RUN_NAMESPACE, f"{seed}-{number}")


def input_for(seed: int, number: int) -> tuple[str, dict[str, Any]]:
    """The flow and input of the soak's run `number`."""
    key = f"{seed}-{number}"
    pick = draw(key, "flow")
    if pick < 0.35:
        return "chaos_chain", {"key": key}
    if pick < 0.7:
        return "chaos_diamond", {"key": key}
    size_draw = draw(key, "size")
    size = 0 if size_draw < 0.1 else MAP_SIZES if size_draw > 0.95 else int(draw(key, "n") * MAP_SIZES)
    return "chaos_map", {"key": key, "size": size}


def doomed_task(run_id: uuid.UUID | str, flow: str) -> tuple[str, int] | None:
    """The (step, index) that raises on every attempt in a doomed run, else None.
    A map element is doomed by index, whatever the map's size: the run is
    doomed only if that element exists (see `doomed`)."""
    rid = str(run_id)
    if draw(rid, "doom") >= DOOMED_RUNS:
        return None
    steps = STEPS[flow]
    step, is_map = steps[int(draw(rid, "doom-step") * len(steps))]
    return step, int(draw(rid, "doom-index") * MAP_SIZES) if is_map else 0


def doomed(run_id: uuid.UUID | str, flow: str, input: dict[str, Any]) -> tuple[str, int] | None:
    """The task that makes this run fail, if its plan says it must."""
    task = doomed_task(run_id, flow)
    if task is None or dict(STEPS[flow])[task[0]] and task[1] >= input.get("size", 0):
        return None
    return task


def behaviour(run_id: uuid.UUID | str, flow: str, step: str, index: int, attempt: int) -> str:
    """What the invocation of this task's attempt does (a pure function)."""
    if doomed_task(run_id, flow) == (step, index):
        return DOOM
    if attempt > PLANNED_ATTEMPTS:
        return OK
    rates = MAP_RATES if dict(STEPS[flow])[step] else SINGLE_RATES
    u = draw(run_id, step, index, attempt)
    for plan, rate in rates:
        if u < rate:
            return plan
        u -= rate
    return OK


def expected_output(flow: str, input: dict[str, Any]) -> dict[str, Any]:
    """The output of a completed run, computed without running anything."""
    key = input["key"]
    if flow == "chaos_chain":
        b = _chain_b(_value(key, "a"))
        return {"c": b + 1}
    if flow == "chaos_diamond":
        n = _value(key, "a")
        return {"d": n * 2 + n * 3}
    return {"total": _total(key, [x * x for x in _elements(key, input["size"])])}


def expected_step_output(flow: str, input: dict[str, Any], step: str) -> Any:
    """A step's output (the map step's array included), for checks of step states."""
    key = input["key"]
    if flow == "chaos_map":
        elements = _elements(key, input["size"])
        return {"plan": elements, "square": [x * x for x in elements],
                "total": expected_output(flow, input)["total"]}[step]
    n = _value(key, "a")
    if flow == "chaos_chain":
        return {"a": n, "b": _chain_b(n), "c": _chain_b(n) + 1}[step]
    return {"a": {"n": n}, "b": n * 2, "c": n * 3, "d": n * 5}[step]


def _value(key: str, step: str) -> int:
    return int(draw(key, "value", step) * 1000)


def _chain_b(a: int) -> int:
    return (a * 7 + 3) % 1009


def _elements(key: str, size: int) -> list[int]:
    return [int(draw(key, "element", i) * 100) for i in range(size)]


def _total(key: str, squares: list[int]) -> int:
    # Weighted by position, so a map output assembled out of order is caught.
    return (sum((i + 1) * v for i, v in enumerate(squares)) + len(key)) % 1_000_003


# -- recording (inside executors) ------------------------------------------------------

_record_file: tuple[int, int] | None = None  # (pid, fd) of this process's record file
_starttime: tuple[int, int] | None = None


def process_starttime(pid: int | str = "self") -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid, it
    names one process even after its pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def record(event: str, ctx: Context, **extra: Any) -> None:
    """Append one event: e (event), r/s/i/a (run, step, index, attempt), p/pp/st
    (pid, parent pid, start time of this process), t (wall clock)."""
    global _record_file, _starttime
    directory = os.environ.get("CHAOS_RECORD_DIR")
    if not directory:
        return
    pid = os.getpid()
    if _record_file is None or _record_file[0] != pid:
        path = os.path.join(directory, f"{pid}.jsonl")
        _record_file = (pid, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        _starttime = (pid, process_starttime() or 0)
    assert _starttime is not None
    line = {"e": event, "r": str(ctx.run_id), "f": ctx.flow_slug, "s": ctx.step_slug,
            "i": ctx.task_index, "a": ctx.attempt, "p": pid, "pp": os.getppid(),
            "st": _starttime[1], "t": time.time(), **extra}
    os.write(_record_file[1], orjson.dumps(line) + b"\n")


# -- what a handler does -------------------------------------------------------------------


def run_planned(ctx: Context, compute: Callable[[], Any]) -> Any:
    plan = behaviour(ctx.run_id, ctx.flow_slug, ctx.step_slug, ctx.task_index, ctx.attempt)
    record("s", ctx, b=plan)
    if plan in (RAISE, DOOM):
        record("r", ctx)
        raise ValueError(f"chaos: planned {plan} at attempt {ctx.attempt}")
    if plan in CRASHES:
        record("x", ctx)
        if plan == EXIT:
            os._exit(EXIT_CODE)
        os.kill(os.getpid(), signal.SIGKILL)
    if plan in OVERRUNS:
        _overrun(ctx, plan)
    try:
        time.sleep(draw(ctx.run_id, ctx.step_slug, ctx.task_index, "pause") * 0.01
                   if not dict(STEPS[ctx.flow_slug])[ctx.step_slug] else 0)
        output = compute()
    except Exception as exc:
        record("u", ctx, error=repr(exc)[:200])
        raise
    record("o", ctx)
    return output


def _overrun(ctx: Context, plan: str) -> None:
    """Tick until killed (or, for OVERRUN_SOFT, until the soft timeout interrupts)."""
    if plan != OVERRUN_SOFT:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if plan == OVERRUN_FORK:
        child = os.fork()
        if child == 0:
            _grandchild(ctx)
        record("g", ctx, child=child, child_st=process_starttime(child) or 0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record("k", ctx)
        time.sleep(TICK)
    record("o", ctx, overran=True)


def _grandchild(ctx: Context) -> None:
    """Tick for GRANDCHILD_SECONDS unless killed with the executor's process group."""
    try:
        deadline = time.monotonic() + GRANDCHILD_SECONDS
        while time.monotonic() < deadline:
            record("gk", ctx)
            time.sleep(TICK)
    finally:
        os._exit(0)


# -- the flows ----------------------------------------------------------------------------

OPTIONS = {"max_attempts": MAX_ATTEMPTS, "base_delay": BASE_DELAY, "timeout": TIMEOUT}

chain = Flow("chaos_chain", **OPTIONS)


@chain.step()
def a(input: dict[str, Any], ctx: Context) -> int:
    return run_planned(ctx, lambda: _value(input["key"], "a"))


@chain.step(depends_on=["a"])
def b(deps: dict[str, Any], ctx: Context) -> int:
    return run_planned(ctx, lambda: _chain_b(deps["a"]))


@chain.step(depends_on=["b"])
def c(deps: dict[str, Any], ctx: Context) -> int:
    return run_planned(ctx, lambda: deps["b"] + 1)


diamond = Flow("chaos_diamond", **OPTIONS)


@diamond.step(slug="a")
def d_a(input: dict[str, Any], ctx: Context) -> dict[str, int]:
    return run_planned(ctx, lambda: {"n": _value(input["key"], "a")})


@diamond.step(slug="b", depends_on=["a"])
def d_b(deps: dict[str, Any], ctx: Context) -> int:
    return run_planned(ctx, lambda: deps["a"]["n"] * 2)


@diamond.step(slug="c", depends_on=["a"])
def d_c(deps: dict[str, Any], ctx: Context) -> int:
    return run_planned(ctx, lambda: deps["a"]["n"] * 3)


@diamond.step(slug="d", depends_on=["b", "c"])
def d_d(deps: dict[str, Any], ctx: Context) -> int:
    return run_planned(ctx, lambda: deps["b"] + deps["c"])


fanout = Flow("chaos_map", **OPTIONS)


@fanout.step()
def plan(input: dict[str, Any], ctx: Context) -> list[int]:
    return run_planned(ctx, lambda: _elements(input["key"], input["size"]))


@fanout.map(array="plan")
def square(item: int, ctx: Context) -> int:
    return run_planned(ctx, lambda: item * item)


@fanout.step(depends_on=["square"])
def total(deps: dict[str, Any], ctx: Context) -> int:
    # Reads ctx.flow_input: one query on the executor's own connection, which
    # dropped connections and Postgres restarts put to the test.
    return run_planned(ctx, lambda: _total(ctx.flow_input["key"], deps["square"]))
