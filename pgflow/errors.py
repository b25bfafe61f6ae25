"""Exceptions raised by pgflow. Each message names the flow, step or run and what to do."""

from __future__ import annotations


class PgflowError(Exception):
    """Base class for every error pgflow raises on purpose."""


class FlowDefinitionError(PgflowError, ValueError):
    """A flow definition is invalid (bad slug, unknown dependency, cycle, bad option)."""


class FlowNotFoundError(PgflowError, LookupError):
    """A run was started for a flow that is not registered."""


class InvalidInputError(PgflowError, ValueError):
    """Input that the flow cannot accept (not JSON, a root map given a non-array, ...)."""


class ShapeConflictError(PgflowError):
    """A flow is registered with a different shape than the one being registered."""


class RunNotFoundError(PgflowError, LookupError):
    """No run has the given run id."""


class PermissionDeniedError(PgflowError, PermissionError):
    """The database role lacks a right this call needs (see the roles in deploy/README.md)."""
