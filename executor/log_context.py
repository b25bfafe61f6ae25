"""Log records emitted inside a handler carry the task's run id, flow, step,
task index and attempt.

`execute` sets a context variable around the handler call; `TaskContextFilter`
(installed on its log handlers by `pgflow supervise`, and usable on yours)
copies it onto every record as `run_id`, `flow`, `step`, `task_index`,
`attempt`, plus `task`: " [run=... step=... attempt=N]" for text formats, or
"" outside a handler.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from pgflow.context import Context

FIELDS = ("run_id", "flow", "step", "task_index", "attempt")

# The running task's Context; its fields are read only when a record is logged.
_current: ContextVar[Context | None] = ContextVar("pgflow_task", default=None)


@contextlib.contextmanager
def task_logging(ctx: Context) -> Iterator[None]:
    token = _current.set(ctx)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> dict[str, Any] | None:
    """The running task's fields, or None outside a handler."""
    ctx = _current.get()
    if ctx is None:
        return None
    return {"run_id": str(ctx.run_id), "flow": ctx.flow_slug, "step": ctx.step_slug,
            "task_index": ctx.task_index, "attempt": ctx.attempt}


class TaskContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        info = current()
        if info is None:
            if not hasattr(record, "task"):
                record.task = ""
            return True
        for key in FIELDS:
            setattr(record, key, info[key])
        index = f" task={info['task_index']}" if info["task_index"] else ""
        record.task = (f" [run={info['run_id']} flow={info['flow']} step={info['step']}{index} "
                       f"attempt={info['attempt']}]")
        return True
