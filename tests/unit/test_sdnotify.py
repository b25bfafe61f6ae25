"""sd_notify messages, received on real AF_UNIX datagram sockets as systemd would."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.sdnotify import Notifier


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"pgflow-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    yield "@" + name, sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_every_message_on_a_path_socket(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})

    assert notifier.enabled
    assert notifier.ready()
    assert received(sock) == "READY=1"
    assert notifier.ready(status="4 executors, listening")
    assert received(sock) == "READY=1\nSTATUS=4 executors, listening"
    assert notifier.status("draining: 3 tasks\nleft")
    assert received(sock) == "STATUS=draining: 3 tasks left"
    assert notifier.stopping()
    assert received(sock) == "STOPPING=1"
    assert notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"
    assert notifier.mainpid(4242)
    assert received(sock) == "MAINPID=4242"


def test_reloading_carries_the_monotonic_time(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    assert notifier.reloading()

    reloading, monotonic = received(sock).split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    key, usec = monotonic.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after


def test_abstract_socket_names(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})

    assert notifier.ready(status="up")
    assert received(sock) == "READY=1\nSTATUS=up"


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_environment({})

    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_a_vanished_socket_returns_false_and_recovers(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    sock.close()
    os.unlink(address)

    assert notifier.ready() is False  # ENOENT / ECONNREFUSED, logged, not raised

    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(address)
    again.settimeout(2)
    with again:
        assert notifier.watchdog()
        assert received(again) == "WATCHDOG=1"


def test_unusable_addresses_disable_notifications() -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/nonexistent/notify"}).ready() is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(environ: dict[str, str], expected: float | None) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@whatever", **environ})
    assert notifier.watchdog_interval() == expected
