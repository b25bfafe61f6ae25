"""A small example flow: split text into lines, count each line's words in a
map step, and summarize in parallel branches.

    split ──> count (map, one task per line) ──> total
      └──────────────────────────────────────> longest
"""

from __future__ import annotations

from pgflow import Context, Flow

flow = Flow("wordcount", max_attempts=3, base_delay=1, timeout=30)


@flow.step()
def split(text: str, ctx: Context) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@flow.map(array="split")
def count(line: str, ctx: Context) -> int:
    return len(line.split())


@flow.step(depends_on=["count"])
def total(deps: dict, ctx: Context) -> int:
    return sum(deps["count"])


@flow.step(depends_on=["split"])
def longest(deps: dict, ctx: Context) -> str:
    return max(deps["split"], key=len, default="")
