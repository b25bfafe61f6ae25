"""`Ok` / `Err` results, so the executor reports failures as values, never by raising.

    match execute(flow, task, conn):
        case Timeout(message): ...   # the process that ran it must be replaced
        case Err(message): ...
        case Ok(output): ...

`Timeout` is an `Err` (put its case first when the difference matters); callers
that only care about failure can test `result.timed_out`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    value: T

    __match_args__ = ("value",)

    @property
    def timed_out(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Err:
    error: str
    # For an exception: its type's name and the traceback (bounded), kept
    # with the failed attempt so `pgflow run` can show where it happened.
    # Results compare by message only.
    error_type: str | None = field(default=None, compare=False)
    traceback: str | None = field(default=None, compare=False)

    __match_args__ = ("error",)

    @property
    def timed_out(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Timeout(Err):
    """The handler overran its soft time limit; its process may be in any state."""

    error_type: str | None = field(default="Timeout", compare=False)

    @property
    def timed_out(self) -> bool:
        return True


Result = Ok[Any] | Err
