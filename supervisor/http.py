"""A tiny HTTP endpoint (/metrics, /healthz, /readyz) driven by the supervisor's selector.

No thread: the supervisor forks children, and a thread running in the parent
at fork time can leave a child holding a lock nobody will release. So the
listening socket and every connection are non-blocking and registered with
the loop's `selectors` selector; the loop calls `key.data(mask)` for each
ready key and `expire()` every iteration.

HTTP is parsed by h11 (sans-I/O: it takes the bytes we read and gives back
the bytes to write, so it fits a select loop), not by hand: the endpoint
faces the network. One request per connection (`Connection: close`), GET and
HEAD only. A route is a callable returning (status, content type, body); it
runs in the loop, so it must be quick (rendering metrics is).

What a client can cost the loop is bounded: at most MAX_CONNECTIONS
connections (the oldest is dropped for a new one), a request head of at most
MAX_HEADER_BYTES that must arrive within REQUEST_TIMEOUT_S of the connection
(a slowloris client trickling bytes is dropped then, however active), a
response that must keep moving (IDLE_TIMEOUT_S) and end within
MAX_LIFETIME_S, one bounded read per readiness event and a bounded batch of
accepts per wake-up and a bounded rate of accepts (ACCEPTS_PER_WINDOW).
`next_wakeup()` tells the loop when the next of these deadlines falls, and
`expire()` scans the connections only then.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import selectors
import socket
import time
from collections.abc import Callable, Mapping

import h11

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, str, bytes]]

MAX_HEADER_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 5.0
MAX_LIFETIME_S = 60.0
# After the response: read and discard what the client still sends, so the
# close does not reset the connection under the response (lingering close).
LINGER_S = 1.0
MAX_LINGER_BYTES = 64 * 1024
MAX_CONNECTIONS = 64
READ_BYTES = 4096
ACCEPTS_PER_WAKEUP = 16
# At most this many new connections per window (200 a second): a flood of
# connections costs the loop a bounded share of its time; the rest wait in
# the kernel's backlog. A scraper needs a few a minute.
ACCEPT_WINDOW_S = 0.1
ACCEPTS_PER_WINDOW = 20
TEXT = "text/plain; charset=utf-8"
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable"}  # fmt: skip


class _Phase(enum.Enum):
    READING = "reading"  # the request head
    WRITING = "writing"  # the response
    LINGERING = "lingering"  # response sent, discarding the rest of the request


class HttpEndpoint:
    """`start()`, `register(selector)`, then the loop dispatches events and calls `expire()`."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Route],
        *,
        idle_timeout: float = IDLE_TIMEOUT_S,
        request_timeout: float = REQUEST_TIMEOUT_S,
        max_lifetime: float = MAX_LIFETIME_S,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.routes = host, dict(routes)
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.max_lifetime, self.max_connections, self.clock = max_lifetime, max_connections, clock
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._connections: dict[socket.socket, _Connection] = {}
        self._accept_paused_until: float | None = None
        self._window_start = float("-inf")
        self._window_accepts = 0
        # No connection is past a deadline before this (a lower bound).
        self._next_check = float("inf")

    @property
    def port(self) -> int:
        """The bound port (the one the OS picked when asked for port 0)."""
        if self._listener is None:
            raise RuntimeError("HttpEndpoint.start() has not been called")
        return self._listener.getsockname()[1]

    @property
    def connections(self) -> int:
        return len(self._connections)

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

    def next_wakeup(self) -> float | None:
        """When expire() next has something to do (a deadline, the end of an
        accept pause), on this endpoint's clock; None if nothing is pending."""
        wakeup = min(self._next_check, self._accept_paused_until or float("inf"))
        return None if wakeup == float("inf") else wakeup

    def expire(self, now: float | None = None) -> int:
        """Close connections past their deadlines; the loop calls this every iteration."""
        now = self.clock() if now is None else now
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            if self._listener is not None and self._selector is not None:
                self._selector.register(self._listener, selectors.EVENT_READ, data=self._on_accept)
        if now < self._next_check:
            return 0
        stale = [(c, why) for c in self._connections.values() if (why := self._overdue(c, now))]
        for conn, why in stale:
            log.debug("closing metrics connection from %s: %s", conn.peer, why)
            self._drop(conn, graceful=conn.phase is _Phase.LINGERING)
        self._next_check = min((self._deadline(c) for c in self._connections.values()),
                               default=float("inf"))
        return len(stale)

    def _deadline(self, conn: _Connection) -> float:
        if conn.phase is _Phase.LINGERING:
            return conn.linger_until
        deadline = min(conn.accepted_at + self.max_lifetime, conn.last_active + self.idle_timeout)
        if conn.phase is _Phase.READING:
            deadline = min(deadline, conn.accepted_at + self.request_timeout)
        return deadline

    def _overdue(self, conn: _Connection, now: float) -> str | None:
        if conn.phase is _Phase.LINGERING:
            return "lingered" if now >= conn.linger_until else None
        if now - conn.accepted_at > self.max_lifetime:
            return f"open longer than {self.max_lifetime:g}s"
        if conn.phase is _Phase.READING and now - conn.accepted_at > self.request_timeout:
            return f"no whole request within {self.request_timeout:g}s"
        if now - conn.last_active > self.idle_timeout:
            return f"idle for {self.idle_timeout:g}s"
        return None

    def _pause_accepting(self, until: float) -> None:
        if self._listener is not None:
            self._unregister(self._listener)
        self._accept_paused_until = until

    def close(self) -> None:
        for conn in list(self._connections.values()):
            self._drop(conn)
        if self._listener is not None:
            self._unregister(self._listener)
            self._listener.close()
            self._listener = None

    # -- events ---------------------------------------------------------------

    def _on_accept(self, mask: int) -> None:
        if self._listener is None:  # closed earlier in this round of events
            return
        now = self.clock()
        if now - self._window_start >= ACCEPT_WINDOW_S:
            self._window_start, self._window_accepts = now, 0
        for _ in range(ACCEPTS_PER_WAKEUP):  # bounded, so a flood cannot starve the loop
            if self._window_accepts >= ACCEPTS_PER_WINDOW:
                # Too many new connections: leave the rest in the backlog until the window ends.
                self._pause_accepting(self._window_start + ACCEPT_WINDOW_S)
                return
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # EMFILE and the like: the listener stays readable, so stop watching it for a
                # second rather than spinning the loop; expire() watches it again.
                log.warning("metrics endpoint: accept failed, pausing for 1 s: %s", exc)
                self._pause_accepting(now + 1.0)
                return
            self._window_accepts += 1
            if len(self._connections) >= self.max_connections:
                oldest = min(self._connections.values(), key=lambda c: c.accepted_at)
                self._drop(oldest)
            sock.setblocking(False)
            conn = _Connection(sock, peer, now)
            self._connections[sock] = conn
            self._next_check = min(self._next_check, self._deadline(conn))
            if self._selector is not None:
                self._selector.register(
                    sock, selectors.EVENT_READ, data=functools.partial(self._on_event, conn)
                )

    def _on_event(self, conn: _Connection, mask: int) -> None:
        try:
            if conn.phase is _Phase.READING and mask & selectors.EVENT_READ:
                self._read(conn)
            elif conn.phase is _Phase.WRITING and mask & selectors.EVENT_WRITE:
                self._write(conn)
            elif conn.phase is _Phase.LINGERING and mask & selectors.EVENT_READ:
                self._discard(conn)
        except Exception as exc:  # a client's trouble must never reach the loop
            log.debug("metrics connection from %s failed: %s", conn.peer, exc)
            self._drop(conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        conn.last_active = self.clock()
        conn.http.receive_data(data)  # b"" is the end of the stream
        try:
            event = conn.http.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            self._respond(conn, status, TEXT, f"{_REASONS.get(status, b'error').decode()}: "
                                              f"{exc}\n".encode())
            return
        if isinstance(event, h11.Request):
            self._respond(conn, *self._handle(event))
        elif event is not h11.NEED_DATA:  # ConnectionClosed: the client gave up
            self._drop(conn)

    def _handle(self, request: h11.Request) -> tuple[int, str, bytes, bool]:
        method = request.method.decode("ascii", "replace")
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"only GET and HEAD\n", False
        target = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        route = self.routes.get(target)
        if route is None:
            return 404, TEXT, b"not found\n", head_only
        try:
            status, content_type, body = route()
        except Exception:
            log.exception("metrics endpoint: handler for %s failed", target)
            status, content_type, body = 500, TEXT, b"internal error\n"
        return status, content_type, body, head_only

    def _respond(self, conn: _Connection, status: int, content_type: str, body: bytes,
                 head_only: bool = False) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Connection", "close")]
        if status == 405:
            headers.append(("Allow", "GET, HEAD"))
        http = conn.http
        try:
            parts = [http.send(h11.Response(status_code=status, headers=headers,
                                            reason=_REASONS.get(status, b"")))]
            if body and not head_only:
                parts.append(http.send(h11.Data(data=body)))
            parts.append(http.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:  # a state h11 will not answer from
            log.debug("metrics connection from %s: cannot answer: %s", conn.peer, exc)
            self._drop(conn)
            return
        conn.response = memoryview(b"".join(p for p in parts if p))
        conn.phase = _Phase.WRITING
        self._watch(conn, selectors.EVENT_WRITE)
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        while conn.sent < len(conn.response):
            try:
                conn.sent += conn.sock.send(conn.response[conn.sent : conn.sent + 262144])
            except (BlockingIOError, InterruptedError):
                return  # the socket buffer is full: the selector says when to go on
            conn.last_active = self.clock()
        self._linger(conn)

    def _linger(self, conn: _Connection) -> None:
        """The response is out: send FIN, then read and discard until the client
        closes too (or LINGER_S passes), so an unread request body or the rest of
        an oversized head does not make the kernel reset the connection before
        the client has read the response."""
        with contextlib.suppress(OSError):
            # shutdown sends FIN even if a forked child still holds a copy of the descriptor.
            conn.sock.shutdown(socket.SHUT_WR)
        conn.phase = _Phase.LINGERING
        conn.linger_until = self.clock() + LINGER_S
        self._next_check = min(self._next_check, conn.linger_until)
        self._watch(conn, selectors.EVENT_READ)

    def _discard(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        conn.discarded += len(data)
        if not data or conn.discarded > MAX_LINGER_BYTES:
            self._drop(conn, graceful=True)

    def _watch(self, conn: _Connection, events: int) -> None:
        if self._selector is not None and conn.sock in self._connections:
            self._selector.modify(conn.sock, events, data=functools.partial(self._on_event, conn))

    def _drop(self, conn: _Connection, graceful: bool = False) -> None:
        self._connections.pop(conn.sock, None)
        self._unregister(conn.sock)
        if not graceful:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        conn.sock.close()

    def _unregister(self, sock: socket.socket) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)


class _Connection:
    __slots__ = ("sock", "peer", "accepted_at", "last_active", "http", "phase", "response",
                 "sent", "linger_until", "discarded")

    def __init__(self, sock: socket.socket, peer: object, now: float) -> None:
        self.sock, self.peer, self.accepted_at, self.last_active = sock, peer, now, now
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.phase = _Phase.READING
        self.response = memoryview(b"")
        self.sent = 0
        self.linger_until = 0.0
        self.discarded = 0
