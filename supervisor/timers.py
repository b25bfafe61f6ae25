"""Named deadlines on the monotonic clock, in one place: the loop sleeps
until the earliest and asks which are due. Pure: no I/O, no clock of its own."""

from __future__ import annotations


class Timers:
    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def set(self, name: str, when: float) -> None:
        self._at[name] = when

    def set_earlier(self, name: str, when: float) -> None:
        """Set, unless it is already set to fire sooner."""
        current = self._at.get(name)
        if current is None or when < current:
            self._at[name] = when

    def clear(self, name: str) -> None:
        self._at.pop(name, None)

    def get(self, name: str) -> float | None:
        return self._at.get(name)

    def pop_due(self, now: float) -> list[str]:
        """The timers due at `now`, earliest first; they are cleared (set them again to repeat)."""
        due = sorted((when, name) for name, when in self._at.items() if when <= now)
        for _, name in due:
            del self._at[name]
        return [name for _, name in due]

    def next(self) -> float | None:
        return min(self._at.values(), default=None)

    def __repr__(self) -> str:
        return f"Timers({self._at})"
