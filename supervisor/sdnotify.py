"""The systemd notify protocol (sd_notify(3)), without a dependency.

systemd passes `NOTIFY_SOCKET`: a datagram socket path, or an abstract name
when it starts with '@'. Each message is newline-separated `KEY=VALUE`
assignments. Outside systemd the variable is unset and every call is a no-op.
Nothing here raises: a lost notification must never stop the supervisor
(systemd's start timeout or watchdog will say so loudly enough).

The supervisor keeps NOTIFY_SOCKET in its environment on purpose: a reload
re-executes the same process, which must still find the socket.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None, environ: Mapping[str, str] | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self._environ = dict(os.environ if environ is None else environ)
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET") or None, environ)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """The service is up: after the listener and the children are started (and after a reload)."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        # systemd >= 253 (Type=notify-reload) wants the monotonic time of the reload request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def mainpid(self, pid: int) -> bool:
        return self.notify(f"MAINPID={pid}")

    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1, in seconds: half of WATCHDOG_USEC, or None if not asked."""
        try:
            usec = int(self._environ.get("WATCHDOG_USEC", ""))
            watchdog_pid = self._environ.get("WATCHDOG_PID")
            if usec <= 0 or (watchdog_pid and int(watchdog_pid) != os.getpid()):
                return None
        except ValueError:
            return None
        return usec / 2 / 1_000_000

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; True if it was sent."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
            return True
        except OSError as exc:
            log.debug("sd_notify %r to %r failed: %s", message, self._address, exc)
            self.close()
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> bytes | None:
    if address.startswith("@"):
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("/"):
        return os.fsencode(address)
    log.debug("NOTIFY_SOCKET %r is neither a path nor an abstract name; not notifying", address)
    return None


def _status(text: str | None) -> tuple[str, ...]:
    # One assignment per line: a newline in the text would start a bogus one.
    return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)
