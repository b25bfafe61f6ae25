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


def format_seconds(seconds: float) -> str:
    """The shortest form parse_seconds reads back: 2592000 -> "30d", 90 -> "90s"."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
