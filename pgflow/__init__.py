"""pgflow: a Postgres-native DAG workflow engine.

Applications import only this package: define flows with `Flow`, run them
with `Client`. Handlers receive a `Context`.
"""

from pgflow.client import Client, PruneResult, Run, RunSummary, StepState
from pgflow.context import Context
from pgflow.errors import (
    FlowDefinitionError,
    FlowNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
    PgflowError,
    RunNotFoundError,
    ShapeConflictError,
)
from pgflow.flow import Flow, Step
from pgflow.task import ClaimedTask

__version__ = "0.1.0"

__all__ = [
    "ClaimedTask",
    "Client",
    "Context",
    "Flow",
    "FlowDefinitionError",
    "FlowNotFoundError",
    "InvalidInputError",
    "PermissionDeniedError",
    "PgflowError",
    "PruneResult",
    "Run",
    "RunNotFoundError",
    "RunSummary",
    "ShapeConflictError",
    "Step",
    "StepState",
    "__version__",
]
