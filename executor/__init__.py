"""What runs a task's handler: the Executor functions, the forked child's loop,
and `drain` for running tasks in the current process."""

from executor.drain import drain

__all__ = ["drain"]
