"""Durations as people write them: "90s", "15m", "2h", "7d", "1w"."""

from __future__ import annotations

import re

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
EXAMPLES = "30s, 15m, 2h, 7d or 1w"


def is_duration(text: str) -> bool:
    return DURATION.match(text) is not None


def parse_seconds(text: str) -> float:
    """Seconds in `text`; ValueError naming the accepted forms otherwise."""
    match = DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like {EXAMPLES}")
    return float(match[1]) * UNIT_SECONDS[match[2]]
