"""The metrics endpoint faces the network: slow, huge and garbage requests to a
real supervisor must not slow its tasks, must be dropped after their timeout
and must not make it grow.

Task latency is read from Postgres (a run's completed_at - started_at), once
on a quiet endpoint and once while clients attack it; the figures are
printed (pytest -s) as well as checked. The bounds are loose on purpose:
other people's tests share this machine. A loop that waited on a client
would add seconds, not milliseconds.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pgflow import Client
from tests.e2e.test_metrics_endpoint import free_port, scrape

SLOWLORIS_CONNECTIONS = 40
RUNS = 60


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def latencies(client: Client, runs: int) -> list[float]:
    """start -> completed, one run at a time, in seconds (database clock)."""
    seconds = []
    for i in range(runs):
        run = client.wait(client.start_flow("e2e_noop", {"i": i}), timeout=30)
        assert run.status == "completed"
        seconds.append((run.completed_at - run.started_at).total_seconds())
    return seconds


class Attack:
    """Attacker threads, each paced so that they do not take the machine's CPU."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.closed_after: list[float] = []  # seconds until the server closed a slowloris socket
        self.sent = {"slowloris_bytes": 0, "huge_requests": 0, "garbage_requests": 0}
        self.threads = [threading.Thread(target=t, daemon=True) for t in
                        (self._slowloris, self._huge_headers, self._garbage)]

    def __enter__(self) -> Attack:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def _slowloris(self) -> None:
        """Connections that send a byte of a never-ending head every 0.25 s each."""
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100_000
        open_: dict[socket.socket, tuple[float, int]] = {}
        while not self.stop.is_set():
            while len(open_) < SLOWLORIS_CONNECTIONS:
                open_[self._connect()] = (time.monotonic(), 0)
            for sock, (opened, offset) in list(open_.items()):
                try:
                    sock.send(head[offset:offset + 1])
                    open_[sock] = (opened, offset + 1)
                except OSError:  # closed by the server
                    self.closed_after.append(time.monotonic() - opened)
                    sock.close()
                    del open_[sock]
                    continue
                self.sent["slowloris_bytes"] += 1
            self.stop.wait(0.25)
        for sock in open_:
            sock.close()

    def _huge_headers(self) -> None:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20) + b"\r\n\r\n"
        self._repeat(request, "huge_requests", pause=0.05)

    def _garbage(self) -> None:
        rng = random.Random(13)
        self._repeat(lambda: rng.randbytes(rng.randint(1, 4096)), "garbage_requests", pause=0.01)

    def _repeat(self, request: bytes | Callable[[], bytes], counter: str, pause: float) -> None:
        while not self.stop.is_set():
            try:
                with self._connect() as sock:
                    sock.sendall(request() if callable(request) else request)
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):
                        pass
            except OSError:
                pass  # reset by the server: the answer was cut, the attacker's problem
            self.sent[counter] += 1
            self.stop.wait(pause)


def test_slow_huge_and_garbage_requests_do_not_slow_the_tasks(dsn, start_supervisor):
    port = free_port()
    supervisor = start_supervisor(dsn, "--metrics-port", str(port), flows="e2e_flows:noop")
    with Client(dsn) as client:
        latencies(client, 10)  # warm up: executors, plans, connections
        quiet = latencies(client, RUNS)
        rss_before = rss_kib(supervisor.pid)

        with Attack(port) as attack:
            time.sleep(1.0)  # let the slowloris connections fill the endpoint
            attacked = latencies(client, RUNS)
            statuses = [scrape(port, "/healthz")[0] for _ in range(5)]
            started = time.monotonic()
            while len(attack.closed_after) < SLOWLORIS_CONNECTIONS and time.monotonic() - started < 20:
                time.sleep(0.2)
            rss_during = rss_kib(supervisor.pid)

    quiet_p50, attacked_p50 = statistics.median(quiet), statistics.median(attacked)
    print(f"\ntask latency p50 / max, quiet: {quiet_p50 * 1000:.1f} / {max(quiet) * 1000:.1f} ms; "
          f"under attack: {attacked_p50 * 1000:.1f} / {max(attacked) * 1000:.1f} ms; "
          f"attack: {attack.sent}; slowloris closed after "
          f"{min(attack.closed_after, default=0):.1f}-{max(attack.closed_after, default=0):.1f} s; "
          f"supervisor RSS {rss_before} -> {rss_during} KiB")

    assert attack.sent["huge_requests"] > 10 and attack.sent["garbage_requests"] > 50
    assert attacked_p50 < 3 * quiet_p50 + 0.025, (quiet_p50, attacked_p50)
    assert max(attacked) < 2.0
    assert 200 in statuses  # a scrape still gets through (the oldest connections make room)
    # Slowloris connections are dropped at the request timeout (5 s) whatever they send.
    assert len(attack.closed_after) >= SLOWLORIS_CONNECTIONS
    assert max(attack.closed_after) < 10, sorted(attack.closed_after)[-5:]
    assert rss_during - rss_before < 20 * 1024
    assert supervisor.proc.poll() is None
    assert os.path.exists(f"/proc/{supervisor.pid}")
