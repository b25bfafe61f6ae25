"""The Flow DSL: declaration, validation errors, shape and options."""

from __future__ import annotations

import pytest

from pgflow import Flow, FlowDefinitionError
from pgflow.shape import describe_differences


def diamond() -> Flow:
    flow = Flow("diamond")

    @flow.step()
    def a(input, ctx):
        return input

    @flow.step(depends_on=["a"])
    def b(deps, ctx):
        return 1

    @flow.step(depends_on=["a"], timeout=5)
    def c(deps, ctx):
        return 2

    @flow.step(depends_on=["b", "c"])
    def d(deps, ctx):
        return deps

    return flow


def test_decorators_return_the_handler_unchanged():
    flow = Flow("f")

    def fetch(input, ctx):
        return input * 2

    assert flow.step()(fetch) is fetch
    assert fetch(21, None) == 42
    assert flow.get_step("fetch").handler is fetch


def test_shape_lists_steps_in_dependency_order_with_types():
    flow = Flow("m")

    @flow.map(array="fetch", slug="each")
    def handle(item, ctx): ...

    @flow.step()
    def fetch(input, ctx): ...

    @flow.map()
    def root_map(item, ctx): ...

    assert flow.shape() == {
        "steps": [
            {"slug": "fetch", "type": "single", "depends_on": []},
            {"slug": "root_map", "type": "map", "depends_on": []},
            {"slug": "each", "type": "map", "depends_on": ["fetch"]},
        ]
    }


def test_options_carry_flow_defaults_and_step_overrides():
    flow = Flow("o", max_attempts=5, base_delay=0.5, timeout=10)

    @flow.step(timeout=2, start_delay=3)
    def a(input, ctx): ...

    options = flow.options()
    assert (options["max_attempts"], options["base_delay"], options["timeout"]) == (5, 0.5, 10)
    assert options["steps"]["a"] == {
        "max_attempts": None, "base_delay": None, "timeout": 2, "start_delay": 3,
    }


def test_defaults_follow_the_semantics():
    flow = Flow("d")
    assert (flow.max_attempts, flow.base_delay, flow.timeout) == (3, 1.0, 30.0)


@pytest.mark.parametrize(
    "slug, problem",
    [("1abc", "must match"), ("has-dash", "must match"), ("run", "reserved"), ("x" * 129, "longer")],
)
def test_invalid_flow_slug_is_named(slug, problem):
    with pytest.raises(FlowDefinitionError, match=problem):
        Flow(slug)


def test_invalid_step_slug_names_flow_and_step():
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match=r"Flow 'f', step 'bad slug'.*must match"):
        flow.step(slug="bad slug")(lambda i, c: None)


def test_duplicate_step_is_refused():
    flow = Flow("f")

    @flow.step()
    def a(input, ctx): ...

    with pytest.raises(FlowDefinitionError, match=r"Flow 'f', step 'a': duplicate step slug"):
        flow.step(slug="a")(lambda i, c: None)


def test_unknown_dependency_names_the_step_and_the_missing_slug():
    flow = Flow("f")

    @flow.step(depends_on=["fech"])
    def summarize(deps, ctx): ...

    with pytest.raises(
        FlowDefinitionError, match=r"Flow 'f', step 'summarize': depends on unknown step 'fech'"
    ):
        flow.shape()


def test_cycle_is_refused_and_described():
    flow = Flow("cyclic")

    @flow.step(depends_on=["c"])
    def a(deps, ctx): ...

    @flow.step(depends_on=["a"])
    def b(deps, ctx): ...

    @flow.step(depends_on=["b"])
    def c(deps, ctx): ...

    with pytest.raises(FlowDefinitionError, match=r"Flow 'cyclic': steps form a cycle") as info:
        flow.validate()
    message = str(info.value)
    for slug in "abc":
        assert slug in message


def test_self_dependency_is_refused():
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match="cannot depend on itself"):
        flow.step(slug="a", depends_on=["a"])(lambda d, c: None)


def test_map_with_two_sources_is_refused():
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match="one array source"):
        flow.map(array=["a", "b"])(lambda x, c: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"max_attempts": 1.5}, "max_attempts must be an integer"),
        ({"max_attempts": True}, "max_attempts must be an integer"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"timeout": "5"}, "timeout must be a number"),
        ({"base_delay": -1}, "base_delay must be >= 0"),
        ({"start_delay": float("nan")}, "start_delay must be >= 0"),
        # Upper bounds: one huge value must not break claims for every flow.
        ({"timeout": 3e6}, r"timeout must be > 0 and <= 604800 seconds, got 3000000.0"),
        ({"start_delay": 1e15}, "start_delay must be >= 0 and <= 2.592e.06 seconds"),
        ({"max_attempts": 10**6}, "max_attempts must be >= 1 and <= 1000"),
        ({"base_delay": float("inf")}, "base_delay must be >= 0 and <= 3600"),
    ],
)
def test_bad_step_options_name_flow_step_and_option(options, problem):
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match=rf"Flow 'f', step 'a': {problem}"):
        flow.step(slug="a", **options)(lambda i, c: None)


def test_bad_flow_options_are_refused():
    with pytest.raises(FlowDefinitionError, match="Flow 'f': timeout must be > 0"):
        Flow("f", timeout=-1)


def test_declaring_dependencies_in_another_order_is_the_same_shape():
    def joined(order: list[str]) -> Flow:
        flow = Flow("join")
        for slug in ("x", "y"):
            flow.step(slug=slug)(lambda i, c: None)
        flow.step(slug="both", depends_on=order)(lambda d, c: None)
        return flow

    assert joined(["x", "y"]).shape() == joined(["y", "x"]).shape()


def test_empty_flow_cannot_be_shaped():
    with pytest.raises(FlowDefinitionError, match="has no steps"):
        Flow("empty").shape()


def test_shape_differences_are_described_in_words():
    old = diamond().shape()
    flow = Flow("diamond")

    @flow.step()
    def a(input, ctx): ...

    @flow.map(array="a", slug="b")
    def b(item, ctx): ...

    @flow.step(depends_on=["a", "b"])
    def e(deps, ctx): ...

    lines = describe_differences(old, flow.shape())
    assert "step 'b' changed from a single step to a map step" in lines
    assert "step 'c' was removed" in lines
    assert "step 'd' was removed" in lines
    assert "step 'e' is new" in lines
    assert describe_differences(old, diamond().shape()) == []


@pytest.mark.parametrize("options, problem", [
    ({"max_attempts": None}, "max_attempts must be an integer, got None"),
    ({"timeout": None}, "timeout must be a number, got None"),
    ({"base_delay": "1"}, "base_delay must be a number, got '1'"),
    ({"timeout": float("nan")}, "timeout must be > 0"),
    ({"timeout": 10**400}, r"timeout must be > 0 and <= 604800 seconds, got 1000000000\d+\.\.\.$"),
    ({"max_attempts": 2**70}, "max_attempts must be >= 1 and <= 1000"),
])
def test_every_flow_option_is_checked(options, problem):
    with pytest.raises(FlowDefinitionError, match=rf"^Flow 'f': {problem}"):
        Flow("f", **options)


@pytest.mark.parametrize("depends_on", [5, None, 1.5])
def test_depends_on_must_be_slugs(depends_on):
    with pytest.raises(FlowDefinitionError, match="depends_on must be a list of step slugs"):
        Flow("f").step(slug="a", depends_on=depends_on)  # type: ignore[arg-type]
