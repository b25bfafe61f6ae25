"""Conditions on steps: `if_` / `if_not` patterns and what an unmet
condition (`when_unmet`) or a task out of attempts (`when_exhausted`) does.

The engine evaluates them in SQL (pgflow._advance) with JSON containment;
this module only checks and describes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from pgflow.errors import FlowDefinitionError

WhenUnmet = Literal["skip", "skip_cascade", "fail"]
WhenExhausted = Literal["fail", "skip", "skip_cascade"]
WHEN_UNMET: tuple[WhenUnmet, ...] = ("skip", "skip_cascade", "fail")
WHEN_EXHAUSTED: tuple[WhenExhausted, ...] = ("fail", "skip", "skip_cascade")
# Why a step was skipped (pgflow.step_states.skip_reason).
SKIP_REASONS = ("condition_unmet", "dependency_skipped", "handler_failed")


@dataclass(frozen=True)
class Condition:
    """When a step runs, and what happens when it does not.

    `if_` / `if_not` are JSON patterns matched by containment (Postgres `@>`)
    against the step's input: the flow input for a root step, the map of
    dependency outputs keyed by slug otherwise. `when_unmet` says what an
    unmet condition does; `when_exhausted` what a task that ran out of
    attempts does. All four are part of the flow's shape.
    """

    if_: Any = None
    if_not: Any = None
    when_unmet: WhenUnmet = "skip"
    when_exhausted: WhenExhausted = "fail"

    @property
    def has_pattern(self) -> bool:
        return self.if_ is not None or self.if_not is not None

    def shape(self) -> dict[str, Any]:
        """What goes into the step's entry of the shape: only what differs
        from "always run, fail the run when exhausted", so flows without
        conditions keep the shape they had before conditions existed."""
        out: dict[str, Any] = {}
        if self.if_ is not None:
            out["if"] = self.if_
        if self.if_not is not None:
            out["if_not"] = self.if_not
        if self.when_unmet != "skip":
            out["when_unmet"] = self.when_unmet
        if self.when_exhausted != "fail":
            out["when_exhausted"] = self.when_exhausted
        return out


def json_pattern(where: str, name: str, value: Any) -> Any:
    """The pattern as JSON will hold it (tuples become lists), or a clear error."""
    if value is None:
        return None
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError as exc:
        raise FlowDefinitionError(f"{where}: {name} must be a JSON pattern (dicts, lists, "
                                  f"strings, numbers, booleans), got {value!r} ({exc})") from None


def build_condition(where: str, if_: Any, if_not: Any, when_unmet: object,
                    when_exhausted: object) -> Condition:
    """A checked Condition; FlowDefinitionError naming `where` otherwise."""
    if when_unmet not in WHEN_UNMET:
        raise FlowDefinitionError(f"{where}: when_unmet must be one of "
                                  f"{', '.join(map(repr, WHEN_UNMET))}, got {when_unmet!r}")
    if when_exhausted not in WHEN_EXHAUSTED:
        raise FlowDefinitionError(f"{where}: when_exhausted must be one of "
                                  f"{', '.join(map(repr, WHEN_EXHAUSTED))}, got {when_exhausted!r}")
    condition = Condition(json_pattern(where, "if_", if_), json_pattern(where, "if_not", if_not),
                          when_unmet, when_exhausted)  # type: ignore[arg-type]
    if when_unmet != "skip" and not condition.has_pattern:
        raise FlowDefinitionError(f"{where}: when_unmet={when_unmet!r} needs a condition; give "
                                  "if_= and/or if_not=")
    return condition
