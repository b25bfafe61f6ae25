"""Comparing flow shapes, to explain a refused registration in plain words."""

from __future__ import annotations

from typing import Any

# Conditions are part of the shape; absent keys mean the defaults.
CONDITION_KEYS = {"if": None, "if_not": None, "when_unmet": "skip", "when_exhausted": "fail"}


def describe_differences(registered: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per difference between two shapes ({"steps": [...]})."""
    old_steps = {s["slug"]: s for s in registered.get("steps", [])}
    new_steps = {s["slug"]: s for s in new.get("steps", [])}
    lines = []
    for slug in new_steps.keys() - old_steps.keys():
        lines.append(f"step {slug!r} is new")
    for slug in old_steps.keys() - new_steps.keys():
        lines.append(f"step {slug!r} was removed")
    for slug in old_steps.keys() & new_steps.keys():
        old, cur = old_steps[slug], new_steps[slug]
        if old["type"] != cur["type"]:
            lines.append(f"step {slug!r} changed from a {old['type']} step to a {cur['type']} step")
        if sorted(old["depends_on"]) != sorted(cur["depends_on"]):
            lines.append(
                f"step {slug!r} depends on {cur['depends_on']} instead of {old['depends_on']}"
            )
        for key, default in CONDITION_KEYS.items():
            before, after = old.get(key, default), cur.get(key, default)
            if before != after:
                lines.append(f"step {slug!r} changed its condition ({key}: {before!r} -> {after!r})")
    if not lines and [s["slug"] for s in registered.get("steps", [])] != list(new_steps):
        lines.append("the steps are in a different order")
    return sorted(lines)
