"""A claimed task as the supervisor holds it: what it needs for scheduling,
deadlines, answers and metrics, and the request frame for an executor,
built once from the claim's row (the input inside it is never decoded)."""

from __future__ import annotations

from dataclasses import dataclass

from executor import protocol


@dataclass(slots=True, eq=False)
class HeldTask:
    task_id: int
    token: int
    run_id: str
    flow_slug: str
    step_slug: str
    task_index: int
    attempt: int
    timeout_ms: int
    waited_s: float  # visible -> claimed, on the database clock
    frame: bytes  # the request frame for an executor
    claimed_at: float  # monotonic, when the claim's answer arrived

    @property
    def fence(self) -> tuple[int, int]:
        return self.task_id, self.token

    def __repr__(self) -> str:
        return f"<task {self.task_id} {self.flow_slug}/{self.step_slug} attempt {self.attempt}>"


# The claim statement's columns (pgflow/sql/worker/claim.sql), in order.
CLAIM_COLUMNS = ("task_id", "token", "run_id", "flow_slug", "step_slug", "task_index", "attempt",
                 "timeout_ms", "input", "input_is_flow_input", "waited_s", "flow_input")


def from_claim_row(row: tuple[bytes | None, ...], claimed_at: float) -> HeldTask:
    """A HeldTask from one row of the claim, as text values in CLAIM_COLUMNS order."""
    (task_id, token, run_id, flow, step, index, attempt, timeout_ms, input, is_flow_input,
     waited, flow_input) = row
    assert task_id and token and run_id and flow and step and index and attempt and timeout_ms
    assert input is not None and is_flow_input and waited
    tid, tok, idx, att, tms = int(task_id), int(token), int(index), int(attempt), int(timeout_ms)
    frame = protocol.encode_request(tid, tok, run_id, flow, step, idx, att, tms,
                                    is_flow_input == b"t", input, flow_input)
    return HeldTask(tid, tok, run_id.decode(), flow.decode(), step.decode(), idx, att, tms,
                    float(waited), frame, claimed_at)
