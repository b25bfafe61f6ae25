"""A task as the claim hands it out: everything a handler needs to run."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    task_id: int
    # Drawn by the claim that holds the task: the fence every answer carries
    # (a late answer from an expired or released claim carries another).
    token: int
    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int
    attempt: int
    timeout_ms: int
    # The handler's input, prepared by the claim: flow input (root single
    # step), the deps map (dependent single step) or the element (map task).
    input: Any
    # True when `input` is the flow input itself, so ctx.flow_input needs no query.
    input_is_flow_input: bool = False
    # Seconds the task had been visible (claimable) when it was claimed.
    waited_s: float = 0.0
    # The run's input as JSON text, when the claim carried it for a task whose
    # input is something else (it does for small inputs): ctx.flow_input then
    # decodes it instead of querying.
    flow_input_json: str | bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        """A dict that orjson can encode (run_id as str). Built by hand:
        dataclasses.asdict deep-copies the input, which showed as the parent's
        largest cost per task under load."""
        return {
            "task_id": self.task_id, "token": self.token, "run_id": str(self.run_id),
            "flow_slug": self.flow_slug,
            "step_slug": self.step_slug, "task_index": self.task_index, "attempt": self.attempt,
            "timeout_ms": self.timeout_ms, "input": self.input,
            "input_is_flow_input": self.input_is_flow_input, "waited_s": self.waited_s,
            "flow_input_json": (self.flow_input_json.decode()
                                if isinstance(self.flow_input_json, bytes)
                                else self.flow_input_json),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ClaimedTask:
        return cls(**{**data, "run_id": uuid.UUID(data["run_id"])})
