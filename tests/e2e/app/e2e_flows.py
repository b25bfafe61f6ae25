"""Flows the end-to-end tests run through a real `pgflow supervise`.

Handlers that need to tell the test something (their pid, that they ran)
write files named in their input.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from pathlib import Path

from pgflow import Flow

# Read at import: the HUP test changes the file and expects the re-executed
# supervisor to serve the new value.
VERSION_FILE = os.environ.get("PGFLOW_TEST_E2E_VERSION_FILE")
VERSION = Path(VERSION_FILE).read_text().strip() if VERSION_FILE else "none"


def _note_pid(input: dict) -> None:
    if input.get("pid_file"):
        Path(input["pid_file"]).write_text(str(os.getpid()))


diamond = Flow("e2e_diamond")


@diamond.step()
def a(input, ctx):
    return {"n": input["n"] + 1}


@diamond.step(depends_on=["a"])
def b(deps, ctx):
    return deps["a"]["n"] * 2


@diamond.step(depends_on=["a"])
def c(deps, ctx):
    return deps["a"]["n"] * 3


@diamond.step(depends_on=["b", "c"])
def d(deps, ctx):
    return deps["b"] + deps["c"]


sleepy = Flow("e2e_sleepy", max_attempts=1, timeout=1)


@sleepy.step()
def nap(input, ctx):
    _note_pid(input)
    time.sleep(input.get("seconds", 60))
    return "woke up"


stuck = Flow("e2e_stuck", max_attempts=1, timeout=1)


@stuck.step()
def in_c(input, ctx):
    """Blocks every signal, then sleeps inside libc: only SIGKILL ends it."""
    _note_pid(input)
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    ctypes.CDLL(None).sleep(60)
    return "never"


crashy = Flow("e2e_crash", max_attempts=2, base_delay=0)


@crashy.step()
def crash_once(input, ctx):
    if ctx.attempt == 1:
        if input["how"] == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
    return f"recovered on attempt {ctx.attempt}"


big = Flow("e2e_big", timeout=60)


@big.step()
def grow(input, ctx):
    return {"received": len(input["blob"]), "blob": "y" * 20_000_000}


slow = Flow("e2e_slow", timeout=4, max_attempts=3, base_delay=0)


@slow.step()
def work(input, ctx):
    _note_pid(input)
    time.sleep(input.get("seconds", 0.5))
    return {"pid": os.getpid(), "attempt": ctx.attempt}


versioned = Flow("e2e_version")


@versioned.step()
def which(input, ctx):
    return VERSION


noop = Flow("e2e_noop")


@noop.step()
def echo(input, ctx):
    return input


chain = Flow("e2e_chain")


@chain.step()
def first(input, ctx):
    return input + 1


@chain.step(depends_on=["first"])
def second(deps, ctx):
    return deps["first"] + 1


@chain.step(depends_on=["second"])
def third(deps, ctx):
    return deps["second"] + 1


fanout = Flow("e2e_map")


@fanout.map()
def square(item, ctx):
    return item * item


failing = Flow("e2e_fail", max_attempts=2, base_delay=0)


@failing.step()
def always_fails(input, ctx):
    logging.getLogger("e2e").warning("about to fail")
    raise ValueError(f"bad input {input!r}")


faults = Flow("e2e_faults", max_attempts=1, timeout=1)


@faults.step()
def forks_and_hangs(input, ctx):
    """Forks a grandchild that would sleep a minute, then overruns its timeout."""
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(60)
        os._exit(0)
    Path(input["pid_file"]).write_text(str(grandchild))
    time.sleep(60)


closes_stdio = Flow("e2e_closes_stdio")


@closes_stdio.step()
def close_them(input, ctx):
    os.close(1)
    os.close(2)
    return os.getpid()


sized = Flow("e2e_sized")


@sized.step()
def output_of(input, ctx):
    return "x" * input["bytes"]


late = Flow("e2e_late", max_attempts=1, timeout=1)


@late.step()
def half_a_second(input, ctx):
    _note_pid(input)
    time.sleep(0.5)
    return "on time"


reads_input = Flow("e2e_reads_input")


@reads_input.step()
def start(input, ctx):
    return 1


@reads_input.step(depends_on=["start"])
def uses_flow_input(deps, ctx):
    return ctx.flow_input


reads_flow_input = Flow("e2e_flow_input", max_attempts=1)


@reads_flow_input.step()
def measure(input, ctx):
    return len(input["pad"])


@reads_flow_input.step(depends_on=["measure"])
def recall(deps, ctx):
    """A dependent step reading ctx.flow_input: carried by the claim when the
    run's input is small, else read by the executor over its own connection."""
    return {"tag": ctx.flow_input["tag"], "length": deps["measure"]}


@reads_flow_input.step()
def indexes(input, ctx):
    return [0, 1, 2]


@reads_flow_input.map(array="indexes")
def each(item, ctx):
    return [item, ctx.flow_input["tag"]]
