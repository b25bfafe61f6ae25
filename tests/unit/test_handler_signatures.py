"""Handlers take (input) or (input, ctx): the DSL reads the signature once,
the executor calls each handler the way it was written."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import pytest

from executor.executor import execute
from executor.result import Ok
from pgflow import Flow, FlowDefinitionError
from pgflow.task import ClaimedTask


def task(step_slug: str, input: Any) -> ClaimedTask:
    return ClaimedTask(task_id=1, token=2, run_id=uuid.uuid4(), flow_slug="sig",
                       step_slug=step_slug, task_index=0, attempt=3, timeout_ms=1000,
                       input=input, input_is_flow_input=True)


def test_one_argument_handlers_get_the_input_alone():
    flow = Flow("sig")

    @flow.step()
    def plain(input):
        return input * 2

    @flow.step()
    async def coroutine(input):
        return input * 3

    @flow.map()
    def each(item):
        return item + 1

    assert not flow.steps["plain"].takes_ctx
    assert execute(flow, task("plain", 21), None) == Ok(42)
    assert execute(flow, task("coroutine", 2), None) == Ok(6)
    assert execute(flow, task("each", 1), None) == Ok(2)


def test_two_argument_handlers_still_get_ctx():
    flow = Flow("sig")

    @flow.step()
    def with_ctx(input, ctx):
        return [input, ctx.attempt]

    @flow.step()
    def star(*args):
        return len(args)

    assert flow.steps["with_ctx"].takes_ctx and flow.steps["star"].takes_ctx
    assert execute(flow, task("with_ctx", "x"), None) == Ok(["x", 3])
    assert execute(flow, task("star", None), None) == Ok(2)


def test_bound_methods_partials_and_defaults_count_what_is_left():
    class Service:
        def handle(self, input):
            return input

    flow = Flow("sig")
    flow.step(slug="method")(Service().handle)
    flow.step(slug="partial")(functools.partial(lambda factor, input, ctx: input * factor, 2))
    flow.step(slug="optional_ctx")(lambda input, ctx=None: ctx is not None)

    assert not flow.steps["method"].takes_ctx
    assert flow.steps["partial"].takes_ctx
    assert execute(flow, task("optional_ctx", None), None) == Ok(True)


class Opaque:
    """A callable whose signature cannot be read (like some C builtins)."""

    def __call__(self, *args: Any) -> None: ...

    @property
    def __signature__(self) -> None:
        raise ValueError("no signature")


@pytest.mark.parametrize("handler, problem", [
    (lambda: None, "takes no argument"),
    (lambda a, b, c: None, r"requires 3 arguments \(a, b, c\)"),
    (lambda input, *, key: None, "keyword-only argument"),
    (Opaque(), "cannot read the signature"),
])
def test_other_signatures_are_refused_with_the_flow_and_step(handler, problem):
    flow = Flow("sig")
    with pytest.raises(FlowDefinitionError, match=rf"Flow 'sig', step 'bad': .*{problem}"):
        flow.step(slug="bad")(handler)
