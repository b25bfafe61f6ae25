"""Signals become queued events: the handler only records the signal (and
the wakeup fd wakes the loop); the loop decides what to do."""

from __future__ import annotations

import collections
import selectors
import signal
import socket

HANDLED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
)


class SignalQueue:
    def __init__(self) -> None:
        self.pending: collections.deque[signal.Signals] = collections.deque()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1

    def install(self) -> None:
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._record)
        # The C-level handler writes the signal number here even while the
        # loop blocks in select(), so no signal is noticed late.
        self._previous_wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def uninstall(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]

    def register(self, selector: selectors.BaseSelector) -> None:
        selector.register(self._reader, selectors.EVENT_READ, self._drain)

    def _record(self, signum: int, frame: object) -> None:
        self.pending.append(signal.Signals(signum))

    def _drain(self, mask: int) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def pop_all(self) -> list[signal.Signals]:
        events = list(self.pending)
        self.pending.clear()
        return events

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


