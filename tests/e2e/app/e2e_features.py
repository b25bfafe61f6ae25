"""Flows for the end-to-end tests of issue 12's features: conditions,
concurrency limits, schedules, keys and tags, handlers without ctx.

A module of their own (not e2e_flows), so the scheduled flows start runs
only in the tests that serve them. Handlers that need to tell the test
something write files in the directory named by their input.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pgflow import Flow


def _record_interval(input: dict, seconds: float) -> None:
    """Write "start end" (wall clock) to a file of its own in input["dir"]."""
    started = time.time()
    time.sleep(seconds)
    Path(input["dir"], f"{uuid.uuid4()}.txt").write_text(f"{started} {time.time()}")


routed = Flow("e2e_routed", max_attempts=2, base_delay=0)


@routed.step()
def kind(input):  # no ctx
    return {"kind": input["kind"]}


@routed.step(depends_on=["kind"], if_={"kind": {"kind": "a"}})
def only_a(deps):
    return "a ran"


@routed.step(depends_on=["kind"], if_not={"kind": {"kind": "a"}}, when_unmet="skip_cascade")
def not_a(deps, ctx):
    return f"not a, attempt {ctx.attempt}"


@routed.step(depends_on=["not_a"])
def after_not_a(deps):
    return deps["not_a"] + ", then more"


@routed.step(depends_on=["kind"], when_exhausted="skip")
def fragile(deps):
    if deps["kind"]["kind"] == "boom":
        raise RuntimeError("fragile broke")
    return "fragile held"


@routed.step(depends_on=["fragile", "only_a"])
def summary(deps):
    return sorted(deps)


strict = Flow("e2e_strict")


@strict.step(if_={"allowed": True}, when_unmet="fail")
def guarded(input):
    return "allowed"


limited = Flow("e2e_limited", max_concurrency=2, timeout=10)


@limited.step()
def busy(input):
    _record_interval(input, input["seconds"])
    return "done"


serial = Flow("e2e_serial", timeout=10)


@serial.map(max_concurrency=1)
def one_at_a_time(item):
    _record_interval(item, item["seconds"])
    return "done"


@serial.step()
def unlimited(input):
    return "free"


every_minute = Flow("e2e_every_minute", schedule="* * * * *", schedule_input={"from": "cron"})


@every_minute.step()
def on_tick(input):
    return input


catching_up = Flow("e2e_catching_up", schedule="* * * * *", catch_up=True)


@catching_up.step()
def each_tick(input):
    return "caught up"


keyed = Flow("e2e_keyed")


@keyed.step()
def slow_echo(input):
    time.sleep(input.get("seconds", 0))
    return input
