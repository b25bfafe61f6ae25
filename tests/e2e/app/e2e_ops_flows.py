"""Flows for the operations tests (cancel, retry, retention, workers) run
through a real `pgflow supervise`. Handlers write their pid to the file named
in their input when asked."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pgflow import Flow


def _note_pid(input: dict) -> None:
    if input.get("pid_file"):
        Path(input["pid_file"]).write_text(str(os.getpid()))


long_nap = Flow("ops_long_nap", timeout=120)


@long_nap.step()
def nap(input, ctx):
    _note_pid(input)
    time.sleep(input.get("seconds", 60))
    return "woke up"


# One element fails at once, for good; the others sleep: the run's failure
# must stop them.
siblings = Flow("ops_siblings", max_attempts=1, timeout=120)


@siblings.map()
def sibling(item, ctx):
    if item.get("fail"):
        time.sleep(0.3)  # let the sleepers start first
        raise RuntimeError("this element fails")
    _note_pid(item)
    time.sleep(60)
    return "woke up"


# Fails while the file named in the input exists: remove it, then retry the run.
switched = Flow("ops_switched", max_attempts=1, base_delay=0)


@switched.step()
def prepare(input, ctx):
    return {"calls_file": input["calls_file"], "broken_file": input["broken_file"]}


@switched.step(depends_on=["prepare"])
def fragile(deps, ctx):
    with open(deps["prepare"]["calls_file"], "a") as calls:
        calls.write("fragile\n")
    if os.path.exists(deps["prepare"]["broken_file"]):
        raise RuntimeError("still broken")
    return "fixed"


quick = Flow("ops_quick")


@quick.step()
def echo(input, ctx):
    return input
