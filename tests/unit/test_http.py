"""The metrics endpoint, driven by a real selectors loop and real sockets.

The loop runs in the test thread, as in the supervisor; clients run in
threads of the test (the endpoint itself has none).
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from supervisor import http
from supervisor.http import HttpEndpoint
from supervisor.metrics import CONTENT_TYPE, Metrics

Loop = tuple[HttpEndpoint, selectors.BaseSelector]
BIG = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB: more than loopback's socket buffers hold


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[Loop]:
    metrics = Metrics({"version": "test"})
    metrics.task_finished("etl", "load", "success", 0.1)

    def broken() -> tuple[int, str, bytes]:
        raise RuntimeError("handler bug")

    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE, metrics.render()),
        "/healthz": lambda: (200, "text/plain; charset=utf-8", b"ok\n"),
        "/readyz": lambda: (503, "text/plain; charset=utf-8", b"not ready: database down\n"),
        "/big": lambda: (200, "application/octet-stream", BIG),
        "/broken": broken,
    }
    endpoint = HttpEndpoint("127.0.0.1", 0, routes, clock=clock)
    endpoint.start()
    selector = selectors.DefaultSelector()
    endpoint.register(selector)
    yield endpoint, selector
    endpoint.close()
    selector.close()


def pump(selector: selectors.BaseSelector, until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the supervisor's loop shape until `until()` holds; fail if it takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the loop did not get there in time"
        for key, mask in selector.select(0.01):
            key.data(mask)


class Client(threading.Thread):
    """Sends raw bytes, then reads the whole answer (until the server closes)."""

    def __init__(self, port: int, request: bytes, start_reading: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.port, self.request, self.start_reading = port, request, start_reading
        self.response = b""
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(self.request)
                if self.start_reading is not None:
                    self.start_reading.wait(5)
                while chunk := sock.recv(65536):
                    self.response += chunk
        except Exception as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.is_alive()

    def parsed(self) -> tuple[int, dict[str, str], bytes]:
        assert self.error is None, self.error
        head, _, body = self.response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines)
        return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def fetch(loop: Loop, request: bytes) -> tuple[int, dict[str, str], bytes]:
    endpoint, selector = loop
    client = Client(endpoint.port, request)
    pump(selector, lambda: client.done)
    return client.parsed()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


def test_port_zero_picks_a_free_port(loop: Loop) -> None:
    assert loop[0].port > 0


def test_metrics_are_served(loop: Loop) -> None:
    status, headers, body = fetch(loop, get("/metrics"))

    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert b'pgflow_tasks_completed_total{flow="etl",step="load"} 1.0' in body


def test_health_readiness_and_query_strings(loop: Loop) -> None:
    assert fetch(loop, get("/healthz?verbose=1"))[::2] == (200, b"ok\n")
    assert fetch(loop, get("/readyz"))[::2] == (503, b"not ready: database down\n")


def test_unknown_path_bad_method_and_garbage(loop: Loop) -> None:
    assert fetch(loop, get("/nope"))[0] == 404
    status, headers, _ = fetch(loop, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert fetch(loop, b"hello\r\n\r\n")[0] == 400
    assert fetch(loop, b"GET /" + b"a" * 10000)[0] == 431


def test_head_has_headers_but_no_body(loop: Loop) -> None:
    status, headers, body = fetch(loop, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert (status, headers["content-length"], body) == (200, "3", b"")


def test_a_failing_route_answers_500_and_the_loop_goes_on(
    loop: Loop,
) -> None:
    assert fetch(loop, get("/broken"))[0] == 500
    assert fetch(loop, get("/healthz"))[0] == 200


def test_a_big_body_to_a_slow_reader_does_not_block_the_loop(
    loop: Loop,
) -> None:
    endpoint, selector = loop
    go = threading.Event()
    slow = Client(endpoint.port, get("/big"), start_reading=go)
    pump(selector, lambda: any(c.sent > 0 for c in endpoint._connections.values()))
    (pending,) = endpoint._connections.values()
    assert 0 < pending.sent < len(BIG)  # the socket took what it could; the rest waits for the reader

    # The slow client reads nothing yet; the loop must still answer someone else.
    quick = Client(endpoint.port, get("/healthz"))
    pump(selector, lambda: quick.done)
    assert quick.parsed()[0] == 200
    assert not slow.done

    go.set()
    pump(selector, lambda: slow.done)
    status, headers, body = slow.parsed()
    assert (status, int(headers["content-length"])) == (200, len(BIG))
    assert body == BIG


def test_a_silent_client_neither_blocks_the_loop_nor_stays_forever(loop: Loop, clock: FakeClock) -> None:
    endpoint, selector = loop
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as silent:
        pump(selector, lambda: len(endpoint._connections) == 1)
        assert fetch(loop, get("/healthz"))[0] == 200
        pump(selector, lambda: len(endpoint._connections) == 1)  # the fetch's client closed

        clock.now += 4.0
        assert endpoint.expire() == 0
        clock.now += 2.0
        assert endpoint.expire() == 1
        assert silent.recv(10) == b""  # the server closed it
    assert len(selector.get_map()) == 1  # only the listening socket is left


def test_clients_that_disconnect_early_are_cleaned_up(loop: Loop) -> None:
    endpoint, selector = loop
    half = socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)
    half.sendall(b"GET /big HTTP/1.1\r\n")
    pump(selector, lambda: len(endpoint._connections) == 1)
    half.close()
    pump(selector, lambda: not endpoint._connections)

    reader = socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reader.sendall(get("/big"))
    pump(selector, lambda: any(c.sent > 0 for c in endpoint._connections.values()))
    reader.close()  # linger 0: a reset while the server still has megabytes to send
    pump(selector, lambda: not endpoint._connections)
    assert fetch(loop, get("/healthz"))[0] == 200


def test_close_unregisters_and_closes_everything(clock: FakeClock) -> None:
    endpoint = HttpEndpoint("127.0.0.1", 0, {}, clock=clock)
    endpoint.start()
    port = endpoint.port
    selector = selectors.DefaultSelector()
    endpoint.register(selector)
    pending = socket.create_connection(("127.0.0.1", port), timeout=5)
    pump(selector, lambda: len(selector.get_map()) == 2)

    endpoint.close()

    assert len(selector.get_map()) == 0
    assert pending.recv(10) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    pending.close()
    selector.close()


def test_accept_failing_with_emfile_pauses_accepting_instead_of_spinning(
    loop: Loop, clock: FakeClock
) -> None:
    endpoint, selector = loop
    real = endpoint._listener
    assert real is not None

    class OutOfDescriptors:
        def fileno(self) -> int:
            return real.fileno()

        def accept(self) -> tuple[socket.socket, object]:
            raise OSError(errno.EMFILE, "Too many open files")

    waiting = socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)
    endpoint._listener = OutOfDescriptors()  # type: ignore[assignment]
    try:
        pump(selector, lambda: endpoint._accept_paused_until is not None)
    finally:
        endpoint._listener = real
    assert len(selector.get_map()) == 0  # the listener is not watched: no busy loop
    clock.now += 0.5
    endpoint.expire()
    assert len(selector.get_map()) == 0  # still paused
    clock.now += 0.6
    endpoint.expire()
    pump(selector, lambda: len(endpoint._connections) == 1)  # the connection that waited in the backlog
    waiting.sendall(get("/healthz"))
    waiting.settimeout(5)
    answer: list[bytes] = []
    client = threading.Thread(target=lambda: answer.append(waiting.recv(100)))
    client.start()
    pump(selector, lambda: not client.is_alive())
    assert answer[0].startswith(b"HTTP/1.1 200 OK")
    waiting.close()
    pump(selector, lambda: not endpoint._connections)


def test_a_port_in_use_is_a_clear_error(loop: Loop) -> None:
    taken = loop[0].port
    with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{taken}: Address already in use"):
        HttpEndpoint("127.0.0.1", taken, {}).start()


# -- what the network can throw at it (parsed by h11) -------------------------------


def test_a_slowloris_client_is_dropped_at_the_request_timeout_however_active(
    loop: Loop, clock: FakeClock
) -> None:
    endpoint, selector = loop
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as slow:
        head = get("/metrics")
        for i in range(6):  # a byte a second: never idle, never done
            slow.sendall(head[i:i + 1])
            pump(selector, lambda: endpoint._connections
                 and next(iter(endpoint._connections.values())).last_active == clock.now)
            assert endpoint.expire() == 0 or i == 5
            clock.now += 1.0
        assert endpoint.expire() == 1 or not endpoint._connections
        assert slow.recv(10) == b""
    assert not endpoint._connections


def test_a_megabyte_of_headers_is_refused_with_431_reading_only_a_bounded_amount(
    loop: Loop,
) -> None:
    endpoint, selector = loop
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    client = Client(endpoint.port, huge)
    pump(selector, lambda: any(c.sent > 0 for c in endpoint._connections.values()))
    (conn,) = endpoint._connections.values()
    # h11 stopped at MAX_HEADER_BYTES: what it buffered is at most that plus one read.
    assert len(conn.http.trailing_data[0]) <= http.MAX_HEADER_BYTES + http.READ_BYTES
    pump(selector, lambda: client.done)
    status, _, body = client.parsed()
    assert status == 431 and b"Request Header Fields Too Large" in body
    pump(selector, lambda: not endpoint._connections)


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
    b"\x00" * 100 + b"\r\n\r\n",
    b"GET /metrics\r\n\r\n",  # HTTP/0.9
    b"GET /metrics HTTP/1.1\r\n\r\n",  # no Host
    b"GET /me\x00trics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
])
def test_garbage_gets_400_and_the_endpoint_goes_on(loop: Loop, garbage: bytes) -> None:
    assert fetch(loop, garbage)[0] == 400
    assert fetch(loop, get("/healthz"))[0] == 200


def test_an_unknown_transfer_coding_gets_501(loop: Loop) -> None:
    status, _, body = fetch(loop, b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert status == 501 and body.startswith(b"Not Implemented: ")


def test_one_request_per_connection_even_when_pipelined(loop: Loop) -> None:
    status, headers, body = fetch(loop, get("/healthz") + get("/readyz"))
    assert (status, headers["connection"], body) == (200, "close", b"ok\n")


def test_a_request_body_is_not_read_and_does_not_reset_the_answer(loop: Loop) -> None:
    upload = (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
              + b"b" * 2_000_000)
    assert fetch(loop, upload)[0] == 405


def test_connections_never_exceed_the_limit_the_oldest_goes(clock: FakeClock) -> None:
    endpoint = http.HttpEndpoint("127.0.0.1", 0, {}, clock=clock, max_connections=4)
    endpoint.start()
    selector = selectors.DefaultSelector()
    endpoint.register(selector)
    sockets = []
    try:
        for i in range(10):
            clock.now += 0.01
            sockets.append(socket.create_connection(("127.0.0.1", endpoint.port), timeout=5))
            pump(selector, lambda: any(c.accepted_at == clock.now
                                       for c in endpoint._connections.values()))
            assert len(endpoint._connections) == min(i + 1, 4)
        assert sockets[0].recv(10) == b""  # the oldest were dropped for newer ones
        assert {c.accepted_at for c in endpoint._connections.values()} == {
            clock.now - 0.01 * k for k in range(4)}
    finally:
        for s in sockets:
            s.close()
        endpoint.close()
        selector.close()


def test_a_client_that_never_reads_nor_closes_is_let_go_after_lingering(
    loop: Loop, clock: FakeClock
) -> None:
    endpoint, selector = loop
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as lingerer:
        lingerer.sendall(get("/healthz"))
        pump(selector, lambda: all(c.phase is http._Phase.LINGERING
                                   for c in endpoint._connections.values())
             and bool(endpoint._connections))
        clock.now += http.LINGER_S + 0.1
        assert endpoint.expire() == 1
        assert lingerer.recv(100).startswith(b"HTTP/1.1 200 OK")


def test_a_flood_of_connections_is_accepted_at_a_bounded_rate(loop: Loop, clock: FakeClock) -> None:
    endpoint, selector = loop
    flood = [socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)
             for _ in range(http.ACCEPTS_PER_WINDOW + 10)]
    try:
        pump(selector, lambda: endpoint._accept_paused_until is not None)
        for key, mask in selector.select(0.05):  # the backlog is ready, but not watched
            key.data(mask)
        assert len(endpoint._connections) == http.ACCEPTS_PER_WINDOW
        assert endpoint.next_wakeup() == pytest.approx(clock.now + http.ACCEPT_WINDOW_S)
        clock.now += http.ACCEPT_WINDOW_S
        endpoint.expire()
        pump(selector, lambda: len(endpoint._connections) == len(flood))
    finally:
        for sock in flood:
            sock.close()


def test_next_wakeup_is_the_earliest_deadline(loop: Loop, clock: FakeClock) -> None:
    endpoint, selector = loop
    assert endpoint.next_wakeup() is None
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5):
        pump(selector, lambda: bool(endpoint._connections))
        assert endpoint.next_wakeup() == clock.now + http.REQUEST_TIMEOUT_S
        clock.now += 2.0
        assert endpoint.expire() == 0  # not due: no scan
        clock.now += http.REQUEST_TIMEOUT_S
        assert endpoint.expire() == 1
    assert endpoint.next_wakeup() is None
