"""Handlers that return what cannot be stored, or misbehave with their process,
for tests/e2e/test_bad_input_e2e.py. The run input names the misdeed."""

from __future__ import annotations

import datetime
import decimal
import os
import time
import uuid

from pgflow import Flow


class Unencodable:
    pass


def _recursive() -> list:
    value: list = [1]
    value.append(value)
    return value


def _fork_and_return() -> dict:
    pid = os.fork()
    if pid == 0:  # the grandchild outlives the task a little, then leaves quietly
        time.sleep(0.3)
        os._exit(0)
    return {"forked": True}


BAD = {
    "nan": lambda: {"ratio": float("nan")},
    "infinity": lambda: [float("inf")],
    "datetime": lambda: {"at": datetime.datetime(2024, 1, 1, 12, 0)},
    "uuid": lambda: uuid.UUID(int=5),
    "decimal": lambda: decimal.Decimal("0.1"),
    "set": lambda: {"tags": {"a"}},
    "generator": lambda: (n for n in range(2)),
    "recursive": _recursive,
    "nul": lambda: "a\x00b",
    "object": Unencodable,
    "huge": lambda: "h" * (2 * 1024 * 1024),
}

outputs = Flow("e2e_bad_outputs", max_attempts=1)


@outputs.step()
def produce(input, ctx):
    if input == "fork":
        return _fork_and_return()
    return BAD[input]()
