"""The Context handed to every handler."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

_UNLOADED: Any = object()


class Context:
    """Where a task stands: its run, flow, step, element index and attempt.

    `flow_input` is loaded on first access through `load_flow_input` (one
    query, cached), unless the task already carried it.
    """

    __slots__ = ("run_id", "flow_slug", "step_slug", "task_index", "attempt", "_flow_input",
                 "_load_flow_input")

    def __init__(
        self,
        *,
        run_id: uuid.UUID,
        flow_slug: str,
        step_slug: str,
        task_index: int = 0,
        attempt: int = 1,
        flow_input: Any = _UNLOADED,
        load_flow_input: Callable[[], Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        self.task_index = task_index
        self.attempt = attempt
        self._flow_input = flow_input
        self._load_flow_input = load_flow_input

    @property
    def flow_input(self) -> Any:
        if self._flow_input is _UNLOADED:
            if self._load_flow_input is None:
                raise RuntimeError(
                    f"Run {self.run_id}, step {self.step_slug!r}: flow input is not available "
                    "in this context (no loader was given)"
                )
            self._flow_input = self._load_flow_input()
        return self._flow_input

    @property
    def flow_input_loaded(self) -> bool:
        return self._flow_input is not _UNLOADED

    def __repr__(self) -> str:
        return (
            f"Context(run_id={self.run_id}, flow_slug={self.flow_slug!r}, "
            f"step_slug={self.step_slug!r}, task_index={self.task_index}, attempt={self.attempt})"
        )
