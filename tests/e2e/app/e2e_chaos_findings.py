"""Flows for tests/e2e/test_chaos_findings.py (kept apart from e2e_flows so
they change nothing the other tests see)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pgflow import Flow

forks = Flow("e2e_forks_and_waits", max_attempts=1, timeout=60)


@forks.step()
def fork_then_wait(input, ctx):
    """Forks a grandchild that would sleep a minute, then waits for it."""
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(60)
        os._exit(0)
    if input.get("executor_pid_file"):
        Path(input["executor_pid_file"]).write_text(str(os.getpid()))
    Path(input["pid_file"]).write_text(str(grandchild))
    time.sleep(60)
