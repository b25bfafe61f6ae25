"""A tiny HTTP endpoint (/metrics, /healthz, /readyz) driven by the supervisor's selector.

No thread: the supervisor forks children, and a thread running in the parent
at fork time can leave a child holding a lock nobody will release. So the
listening socket and every connection are non-blocking and registered with
the loop's `selectors` selector; the loop calls `key.data(mask)` for each
ready key. One request per connection (HTTP/1.0 style, `Connection: close`),
GET and HEAD only. A route is a callable returning (status, content type,
body); it runs in the loop, so it must be quick (rendering metrics is).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import selectors
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, str, bytes]]

MAX_REQUEST_BYTES = 8192
IDLE_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip


class HttpEndpoint:
    """`start()`, `register(selector)`, then the loop dispatches events and calls `expire()`."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Route],
        *,
        idle_timeout: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.routes = host, dict(routes)
        self.idle_timeout, self.max_connections, self.clock = idle_timeout, max_connections, clock
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._connections: dict[socket.socket, _Connection] = {}
        self._accept_paused_until: float | None = None

    @property
    def port(self) -> int:
        """The bound port (the one the OS picked when asked for port 0)."""
        if self._listener is None:
            raise RuntimeError("HttpEndpoint.start() has not been called")
        return self._listener.getsockname()[1]

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._requested_port))
            listener.listen(64)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise OSError(
                exc.errno, f"cannot serve metrics on {self.host}:{self._requested_port}: {exc.strerror}"
            ) from exc
        self._listener = listener

    def register(self, selector: selectors.BaseSelector) -> None:
        if self._listener is None:
            raise RuntimeError("HttpEndpoint.start() must come before register()")
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, data=self._on_accept)

    def expire(self, now: float | None = None) -> int:
        """Close connections idle longer than `idle_timeout`; the loop calls this every iteration."""
        now = self.clock() if now is None else now
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            if self._listener is not None and self._selector is not None:
                self._selector.register(self._listener, selectors.EVENT_READ, data=self._on_accept)
        stale = [c for c in self._connections.values() if now - c.last_active > self.idle_timeout]
        for conn in stale:
            log.debug("closing idle metrics connection from %s", conn.peer)
            self._drop(conn)
        return len(stale)

    def close(self) -> None:
        for conn in list(self._connections.values()):
            self._drop(conn)
        if self._listener is not None:
            self._unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _on_accept(self, mask: int) -> None:
        if self._listener is None:  # closed earlier in this round of events
            return
        for _ in range(16):  # a bounded batch per wake-up, so a flood cannot starve the loop
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # EMFILE and the like: the listener stays readable, so stop watching it for a
                # second rather than spinning the loop; expire() watches it again.
                log.warning("metrics endpoint: accept failed, pausing for 1 s: %s", exc)
                self._unregister(self._listener)
                self._accept_paused_until = self.clock() + 1.0
                return
            if len(self._connections) >= self.max_connections:
                oldest = min(self._connections.values(), key=lambda c: c.last_active)
                self._drop(oldest)
            sock.setblocking(False)
            conn = _Connection(sock, peer, self.clock())
            self._connections[sock] = conn
            if self._selector is not None:
                self._selector.register(
                    sock, selectors.EVENT_READ, data=functools.partial(self._on_event, conn)
                )

    def _on_event(self, conn: _Connection, mask: int) -> None:
        try:
            if conn.response is None and mask & selectors.EVENT_READ:
                self._read(conn)
            elif conn.response is not None and mask & selectors.EVENT_WRITE:
                self._write(conn)
        except Exception as exc:  # a client's trouble must never reach the loop
            log.debug("metrics connection from %s failed: %s", conn.peer, exc)
            self._drop(conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self._drop(conn)
            return
        conn.last_active = self.clock()
        conn.request += data
        head_end = conn.request.find(b"\r\n\r\n")
        if head_end < 0:
            head_end = conn.request.find(b"\n\n")
        if head_end >= 0:
            self._respond(conn, *self._handle(conn.request[:head_end]))
        elif len(conn.request) > MAX_REQUEST_BYTES:
            self._respond(conn, 431, "text/plain; charset=utf-8", b"request too large\n")

    def _handle(self, head: bytes) -> tuple[int, str, bytes, bool]:
        parts = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain; charset=utf-8", b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n", False
        route = self.routes.get(target)
        if route is None:
            return 404, "text/plain; charset=utf-8", b"not found\n", method == "HEAD"
        try:
            status, content_type, body = route()
        except Exception:
            log.exception("metrics endpoint: handler for %s failed", target)
            status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        return status, content_type, body, method == "HEAD"

    def _respond(
        self, conn: _Connection, status: int, content_type: str, body: bytes, head_only: bool = False
    ) -> None:
        headers = (
            f"HTTP/1.0 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            + ("Allow: GET, HEAD\r\n" if status == 405 else "")
            + "Connection: close\r\n\r\n"
        ).encode("latin-1")
        conn.response = memoryview(headers if head_only else headers + body)
        if self._selector is not None:
            self._selector.modify(
                conn.sock, selectors.EVENT_WRITE, data=functools.partial(self._on_event, conn)
            )
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        assert conn.response is not None
        while conn.sent < len(conn.response):
            try:
                conn.sent += conn.sock.send(conn.response[conn.sent : conn.sent + 262144])
            except (BlockingIOError, InterruptedError):
                return  # the socket buffer is full: the selector says when to go on
            conn.last_active = self.clock()
        self._drop(conn, graceful=True)

    def _drop(self, conn: _Connection, graceful: bool = False) -> None:
        self._connections.pop(conn.sock, None)
        self._unregister(conn.sock)
        with contextlib.suppress(OSError):
            # shutdown sends FIN even if a forked child still holds a copy of the descriptor.
            conn.sock.shutdown(socket.SHUT_WR if graceful else socket.SHUT_RDWR)
        conn.sock.close()

    def _unregister(self, sock: socket.socket) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)


class _Connection:
    __slots__ = ("sock", "peer", "last_active", "request", "response", "sent")

    def __init__(self, sock: socket.socket, peer: object, now: float) -> None:
        self.sock, self.peer, self.last_active = sock, peer, now
        self.request = b""
        self.response: memoryview | None = None
        self.sent = 0
