"""The Flow DSL: steps, map steps, options, validation and the flow's shape.

A flow is plain Python data until it is registered. Decorators return the
handler unchanged, so handlers stay ordinary functions that tests can call.
Checks that need only one step run at decoration time; checks across steps
(unknown dependencies, cycles) run in `validate()`, which `shape()` calls, so
nothing malformed ever reaches the database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pgflow.conditions import Condition, WhenExhausted, WhenUnmet, build_condition, json_pattern
from pgflow.errors import FlowDefinitionError
from pgflow.handlers import takes_ctx
from pgflow.schedule import Schedule, ScheduleError

SLUG_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_SLUG_LENGTH = 128
RESERVED_SLUGS = frozenset({"run"})

Handler = Callable[..., Any]
StepType = Literal["single", "map"]

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BASE_DELAY = 1.0
DEFAULT_TIMEOUT = 30.0

# Upper bounds, the same as the schema's CHECK constraints: a retry never
# waits more than an hour anyway, a timeout of a week is the longest lease
# the engine hands out, a start delay of 30 days the longest it schedules.
MAX_MAX_ATTEMPTS = 1000
MAX_BASE_DELAY = 3600.0
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_START_DELAY = 30 * 24 * 3600.0
# Tasks of one flow (or step) started at once, across every supervisor.
MAX_CONCURRENCY = 100_000


@dataclass(frozen=True)
class StepOptions:
    """Per-step overrides; None means "use the flow's value"."""

    max_attempts: int | None = None
    base_delay: float | None = None
    timeout: float | None = None
    start_delay: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "max_attempts": self.max_attempts,
            "base_delay": self.base_delay,
            "timeout": self.timeout,
            "start_delay": self.start_delay,
        }


@dataclass(frozen=True)
class Step:
    slug: str
    handler: Handler
    step_type: StepType
    depends_on: tuple[str, ...]
    options: StepOptions
    condition: Condition = field(default_factory=Condition)
    # The handler takes (input, ctx); False: (input) alone.
    takes_ctx: bool = True
    max_concurrency: int | None = None

    @property
    def is_root(self) -> bool:
        return not self.depends_on


def _slug_problem(slug: object) -> str | None:
    if not isinstance(slug, str):
        return f"slug must be a string, got {type(slug).__name__}"
    if len(slug) > MAX_SLUG_LENGTH:
        return f"slug {slug[:20]!r}... is longer than {MAX_SLUG_LENGTH} characters"
    if not SLUG_PATTERN.match(slug):
        return f"slug {slug!r} must match {SLUG_PATTERN.pattern}"
    if slug in RESERVED_SLUGS:
        return f"slug {slug!r} is reserved"
    return None


def _check_number(
    where: str, name: str, value: object, *, minimum: float, maximum: float, integer: bool,
    strict: bool
) -> None:
    """Raise FlowDefinitionError unless minimum <= value <= maximum (minimum < value if strict)."""
    kind = "an integer" if integer else "a number"
    allowed = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise FlowDefinitionError(f"{where}: {name} must be {kind}, got {_short(value)}")
    too_small = value <= minimum if strict else value < minimum
    if too_small or value != value or value > maximum:
        low = f"> {minimum:g}" if strict else f">= {minimum:g}"
        unit = "" if integer else " seconds"
        raise FlowDefinitionError(
            f"{where}: {name} must be {low} and <= {maximum:g}{unit}, got {_short(value)}"
        )


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _check_options(where: str, options: Mapping[str, Any], *, allow_none: bool = True) -> None:
    """Check each option's type and range; None means "inherit" where allow_none."""
    rules = {
        "max_attempts": dict(minimum=1, maximum=MAX_MAX_ATTEMPTS, integer=True, strict=False),
        "base_delay": dict(minimum=0, maximum=MAX_BASE_DELAY, integer=False, strict=False),
        "timeout": dict(minimum=0, maximum=MAX_TIMEOUT, integer=False, strict=True),
        "start_delay": dict(minimum=0, maximum=MAX_START_DELAY, integer=False, strict=False),
    }
    for name, value in options.items():
        if value is not None or not allow_none:
            _check_number(where, name, value, **rules[name])  # type: ignore[arg-type]


def _check_concurrency(where: str, value: object) -> None:
    if value is not None:
        _check_number(where, "max_concurrency", value, minimum=1, maximum=MAX_CONCURRENCY,
                      integer=True, strict=False)


class Flow:
    """A named DAG of steps.

    >>> flow = Flow("analyze", max_attempts=3, base_delay=1, timeout=30)
    >>> @flow.step()
    ... def fetch(input, ctx): ...
    """

    def __init__(
        self,
        slug: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        base_delay: float = DEFAULT_BASE_DELAY,
        timeout: float = DEFAULT_TIMEOUT,
        max_concurrency: int | None = None,
        schedule: str | None = None,
        schedule_input: Any = None,
        timezone: str = "UTC",
        catch_up: bool = False,
    ) -> None:
        problem = _slug_problem(slug)
        if problem:
            raise FlowDefinitionError(f"Flow {slug!r}: {problem}")
        where = f"Flow {slug!r}"
        _check_options(
            where, {"max_attempts": max_attempts, "base_delay": base_delay, "timeout": timeout},
            allow_none=False,
        )
        _check_concurrency(where, max_concurrency)
        self.slug = slug
        self.max_attempts = max_attempts
        self.base_delay = float(base_delay)
        self.timeout = float(timeout)
        self.max_concurrency = max_concurrency
        self.schedule: Schedule | None = None
        if schedule is not None:
            try:
                self.schedule = Schedule(schedule, json_pattern(where, "schedule_input",
                                                                 schedule_input),
                                         timezone, catch_up)
            except ScheduleError as exc:
                raise FlowDefinitionError(f"{where}: {exc}") from None
        elif schedule_input is not None or catch_up or timezone != "UTC":
            raise FlowDefinitionError(f"{where}: schedule_input, timezone and catch_up need "
                                      "schedule='<cron expression>'")
        self._steps: dict[str, Step] = {}

    def __repr__(self) -> str:
        return f"Flow({self.slug!r}, steps={list(self._steps)})"

    # -- building -----------------------------------------------------------

    def step(
        self,
        *,
        slug: str | None = None,
        depends_on: Iterable[str] = (),
        max_attempts: int | None = None,
        base_delay: float | None = None,
        timeout: float | None = None,
        start_delay: float | None = None,
        max_concurrency: int | None = None,
        if_: Any = None,
        if_not: Any = None,
        when_unmet: WhenUnmet = "skip",
        when_exhausted: WhenExhausted = "fail",
    ) -> Callable[[Handler], Handler]:
        """Declare a single step: one task, input is the flow input (root step)
        or a dict of dependency outputs keyed by step slug."""
        deps = self._dependencies(slug, depends_on)
        options = StepOptions(max_attempts, base_delay, timeout, start_delay)
        rules = (if_, if_not, when_unmet, when_exhausted, max_concurrency)

        def decorate(handler: Handler) -> Handler:
            self._add(handler, slug, "single", deps, options, *rules)
            return handler

        return decorate

    def map(
        self,
        *,
        slug: str | None = None,
        array: str | None = None,
        max_attempts: int | None = None,
        base_delay: float | None = None,
        timeout: float | None = None,
        start_delay: float | None = None,
        max_concurrency: int | None = None,
        if_: Any = None,
        if_not: Any = None,
        when_unmet: WhenUnmet = "skip",
        when_exhausted: WhenExhausted = "fail",
    ) -> Callable[[Handler], Handler]:
        """Declare a map step: one task per element of `array`'s output, or of
        the flow input when `array` is None (a root map)."""
        if array is not None and not isinstance(array, str):
            name = slug or "<map>"
            raise FlowDefinitionError(
                f"Flow {self.slug!r}, step {name!r}: a map step takes one array source "
                f"(array='step_slug'), got {array!r}"
            )
        options = StepOptions(max_attempts, base_delay, timeout, start_delay)
        deps = (array,) if array else ()
        rules = (if_, if_not, when_unmet, when_exhausted, max_concurrency)

        def decorate(handler: Handler) -> Handler:
            self._add(handler, slug, "map", deps, options, *rules)
            return handler

        return decorate

    def _dependencies(self, slug: str | None, depends_on: object) -> tuple[str, ...]:
        if isinstance(depends_on, str):
            return (depends_on,)
        try:
            return tuple(depends_on)  # type: ignore[arg-type]
        except TypeError:
            raise FlowDefinitionError(
                f"Flow {self.slug!r}, step {slug or '<step>'!r}: depends_on must be a list of "
                f"step slugs, got {_short(depends_on)}"
            ) from None

    def _add(
        self,
        handler: Handler,
        slug: str | None,
        step_type: StepType,
        depends_on: tuple[str, ...],
        options: StepOptions,
        if_: Any = None,
        if_not: Any = None,
        when_unmet: object = "skip",
        when_exhausted: object = "fail",
        max_concurrency: int | None = None,
    ) -> None:
        if not callable(handler):
            raise FlowDefinitionError(
                f"Flow {self.slug!r}: a step decorator must wrap a function, got {handler!r}"
            )
        step_slug = slug if slug is not None else getattr(handler, "__name__", None)
        where = f"Flow {self.slug!r}, step {step_slug!r}"
        problem = _slug_problem(step_slug)
        if problem:
            raise FlowDefinitionError(f"{where}: {problem}")
        assert isinstance(step_slug, str)
        if step_slug in self._steps:
            raise FlowDefinitionError(
                f"{where}: duplicate step slug; pass slug='...' to give it another name"
            )
        for dep in depends_on:
            if not isinstance(dep, str):
                raise FlowDefinitionError(f"{where}: depends_on must hold step slugs, got {dep!r}")
        if len(set(depends_on)) != len(depends_on):
            raise FlowDefinitionError(f"{where}: depends_on lists a step twice: {depends_on!r}")
        if step_slug in depends_on:
            raise FlowDefinitionError(f"{where}: a step cannot depend on itself")
        if step_type == "map" and len(depends_on) > 1:
            raise FlowDefinitionError(f"{where}: a map step has at most one dependency")
        _check_options(where, options.as_dict())
        _check_concurrency(where, max_concurrency)
        condition = build_condition(where, if_, if_not, when_unmet, when_exhausted)
        self._steps[step_slug] = Step(step_slug, handler, step_type, depends_on, options,
                                      condition, takes_ctx(where, handler), max_concurrency)

    # -- reading ------------------------------------------------------------

    @property
    def steps(self) -> Mapping[str, Step]:
        """Steps in definition order."""
        return dict(self._steps)

    def get_step(self, step_slug: str) -> Step | None:
        return self._steps.get(step_slug)

    def validate(self) -> list[Step]:
        """Check the DAG as a whole; return the steps in a stable topological order."""
        if not self._steps:
            raise FlowDefinitionError(f"Flow {self.slug!r}: has no steps; add one with @flow.step()")
        for step in self._steps.values():
            for dep in step.depends_on:
                if dep not in self._steps:
                    known = ", ".join(self._steps)
                    raise FlowDefinitionError(
                        f"Flow {self.slug!r}, step {step.slug!r}: depends on unknown step "
                        f"{dep!r} (steps of this flow: {known})"
                    )
        if self.schedule is not None:
            for step in self._steps.values():
                if step.step_type == "map" and step.is_root and not isinstance(
                        self.schedule.input, list):
                    raise FlowDefinitionError(
                        f"Flow {self.slug!r}, step {step.slug!r}: a root map step maps over the "
                        f"run input, so schedule_input must be a list, got "
                        f"{self.schedule.input!r}")
        return self._topological_order()

    def _topological_order(self) -> list[Step]:
        order: list[Step] = []
        placed: set[str] = set()
        pending = list(self._steps.values())
        while pending:
            ready = [s for s in pending if all(d in placed for d in s.depends_on)]
            if not ready:
                cycle = _find_cycle({s.slug: s.depends_on for s in pending})
                raise FlowDefinitionError(
                    f"Flow {self.slug!r}: steps form a cycle: {' -> '.join(cycle)}; "
                    "a step may only depend on steps that do not depend on it"
                )
            for step in ready:
                order.append(step)
                placed.add(step.slug)
            pending = [s for s in pending if s.slug not in placed]
        return order

    def shape(self) -> dict[str, Any]:
        """The structure that must match between registrations (no options).
        Dependencies are sorted: the order they are declared in is not shape."""
        return {
            "steps": [
                {"slug": s.slug, "type": s.step_type, "depends_on": sorted(s.depends_on),
                 **s.condition.shape()}
                for s in self.validate()
            ]
        }

    def options(self) -> dict[str, Any]:
        """Options that may change in place between registrations: retries,
        timeouts, delays, concurrency limits and the schedule."""
        return {
            "max_attempts": self.max_attempts,
            "base_delay": self.base_delay,
            "timeout": self.timeout,
            "max_concurrency": self.max_concurrency,
            "schedule": self.schedule.as_dict() if self.schedule else None,
            "steps": {slug: _step_options(s) for slug, s in self._steps.items()},
        }


def _step_options(step: Step) -> dict[str, Any]:
    options: dict[str, Any] = dict(step.options.as_dict())
    if step.max_concurrency is not None:
        options["max_concurrency"] = step.max_concurrency
    return options


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Return one cycle (first node repeated at the end) in a graph known to have one."""
    path: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for dep in graph.get(node, ()):
            if dep in on_path:
                return path[path.index(dep) :] + [dep]
            if dep not in done and dep in graph:
                found = visit(dep)
                if found:
                    return found
        on_path.discard(node)
        done.add(node)
        path.pop()
        return None

    for start in graph:
        if start not in done:
            found = visit(start)
            if found:
                return list(reversed(found))
    raise AssertionError("no cycle found")
