"""Flows the end-to-end benchmark runs: each does (almost) nothing, so the
numbers measure the engine and the supervisor, not the handlers."""

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
