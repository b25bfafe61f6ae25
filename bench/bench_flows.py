"""Flows the end-to-end benchmarks run. Each does (almost) nothing, so the
numbers measure the engine and the supervisor, not the handlers; bench_cpu
alone burns CPU on purpose (to see whether executors run in parallel)."""

from __future__ import annotations

import time

from pgflow import Flow

noop = Flow("bench_noop")


@noop.step()
def only(input, ctx):
    return input


chain = Flow("bench_chain")


@chain.step()
def one(input, ctx):
    return input


@chain.step(depends_on=["one"])
def two(deps, ctx):
    return deps["one"]


@chain.step(depends_on=["two"])
def three(deps, ctx):
    return deps["two"]


fanout = Flow("bench_map")


@fanout.map()
def element(item, ctx):
    return item


latency = Flow("bench_latency")


@latency.step()
def stamp(input, ctx):
    return time.time()


def spin(iterations: int) -> int:
    """Pure-Python CPU work (holds the GIL, no I/O); bench/vs_pgqueuer.py
    calibrates `iterations` to about 20 ms on an idle core."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total % 997


cpu = Flow("bench_cpu")


@cpu.step()
def burn(input, ctx):
    return spin(input["iterations"])
