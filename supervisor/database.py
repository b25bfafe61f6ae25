"""The supervisor's two connections as one thing that is up or down: the
working connection (Store) and the LISTEN connection (Listener), registered
with the loop's selector, lost together and reconnected together with
exponential backoff."""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable

import psycopg

from supervisor.backoff import Backoff
from supervisor.listener import Listener
from supervisor.metrics import Metrics
from supervisor.store import DatabaseUnavailable, Store

log = logging.getLogger("pgflow.supervisor")


class Database:
    def __init__(
        self,
        store: Store,
        listener: Listener,
        selector: selectors.BaseSelector,
        metrics: Metrics,
        on_notified: Callable[[], None],
    ) -> None:
        self.store = store
        self._listener = listener
        self._selector = selector
        self._metrics = metrics
        self._on_notified = on_notified
        self._listener_fd = -1
        self._backoff = Backoff(0.2, 10.0)
        self.next_reconnect = 0.0

    @property
    def connected(self) -> bool:
        return self.store.connected

    @property
    def ready(self) -> bool:
        return self.store.connected and self._listener.connected

    def connect(self) -> None:
        """Connect both (raises DatabaseUnavailable or psycopg.OperationalError)."""
        self.store.connect()
        self._listener.connect()
        # Remember the fd: a broken connection no longer reports it.
        self._listener_fd = self._listener.fileno()
        self._selector.register(self._listener_fd, selectors.EVENT_READ, self._on_readable)
        self._metrics.set_database_connected(True)

    def lost(self, exc: BaseException) -> None:
        """Drop both connections and schedule a reconnect."""
        if self.ready or self.next_reconnect == 0.0:
            log.warning("database connection lost: %s", str(exc).strip() or type(exc).__name__)
        self.close()
        self._metrics.set_database_connected(False)
        self.next_reconnect = time.monotonic() + self._backoff.next_delay()

    def reconnect(self) -> bool:
        """One reconnect attempt; True when both connections are back."""
        try:
            self.connect()
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            self.lost(exc)
            return False
        log.info("database connection restored")
        self._backoff.reset()
        self.next_reconnect = 0.0
        return True

    def _on_readable(self, mask: int) -> None:
        try:
            if self._listener.drain():
                self._on_notified()
        except psycopg.OperationalError as exc:
            self.lost(exc)

    def close(self) -> None:
        if self._listener_fd >= 0 and self._listener_fd in self._selector.get_map():
            self._selector.unregister(self._listener_fd)
        self._listener_fd = -1
        self._listener.close()
        self.store.close()
