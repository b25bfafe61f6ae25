"""executor.protocol: length-prefixed frames, requests built around raw input
JSON, answers whose output the supervisor never decodes."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import orjson
import pytest

from executor import protocol
from executor.protocol import FrameDecoder, FrameError, FrameTooLarge, TruncatedFrame
from pgflow.task import ClaimedTask


def test_a_frame_is_a_big_endian_length_then_the_body() -> None:
    assert protocol.frame(b'{"a":1}') == b"\x00\x00\x00\x07" + b'{"a":1}'


def test_a_frame_fed_byte_by_byte_comes_out_once_whole() -> None:
    decoder = FrameDecoder()
    data = protocol.frame(b"hello world")
    out = []
    for i in range(len(data)):
        got = decoder.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert got == []
        out += got
    assert out == [b"hello world"]
    assert decoder.buffered == 0


def test_several_frames_in_one_feed_and_a_split_remainder() -> None:
    data = b"".join(protocol.frame(str(n).encode()) for n in range(5))
    decoder = FrameDecoder()
    assert decoder.feed(data + data[:3]) == [b"0", b"1", b"2", b"3", b"4"]
    assert decoder.buffered == 3
    assert decoder.feed(data[3:]) == [b"0", b"1", b"2", b"3", b"4"]


def test_a_20_mb_frame_in_8_kib_pieces_decodes_in_linear_time() -> None:
    big = b"x" * 20_000_000
    data = protocol.frame(big)
    decoder = FrameDecoder()
    started = time.perf_counter()
    out = []
    for offset in range(0, len(data), 8192):
        out += decoder.feed(data[offset : offset + 8192])
    elapsed = time.perf_counter() - started
    assert out == [big]
    assert elapsed < 2, f"decoding took {elapsed:.2f}s"


def test_an_oversize_length_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameTooLarge, match="1025 bytes"):
        decoder.feed(b"\x00\x00\x04\x01")
    with pytest.raises(FrameTooLarge):
        protocol.frame(b"x" * 2000, max_frame_bytes=1024)


def test_the_default_limit_refuses_a_corrupt_length() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_read_from_a_socket_gives_whole_frames_then_none_at_eof() -> None:
    """read_from reuses one buffer; a frame larger than it arrives over several reads."""
    big = b"y" * (protocol.READ_CHUNK * 3 + 17)
    data = b"".join(protocol.frame(body) for body in (b"a", big, b"b"))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with ours, theirs:
        writer = threading.Thread(target=theirs.sendall, args=(data,))
        writer.start()
        decoder = FrameDecoder()
        bodies: list[bytes] = []
        while len(bodies) < 3:
            try:
                got = decoder.read_from(ours.fileno())
            except BlockingIOError:
                time.sleep(0.001)
                continue
            assert got is not None
            bodies += got
        writer.join()
        assert bodies == [b"a", big, b"b"]
        with pytest.raises(BlockingIOError):
            decoder.read_from(ours.fileno())
        theirs.shutdown(socket.SHUT_WR)
        assert decoder.read_from(ours.fileno()) is None
        assert decoder.buffered == 0


def test_read_and_write_over_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        protocol.write_all(write_fd, protocol.frame(b"one"))
        protocol.write_all(write_fd, protocol.frame(b""))
        os.close(write_fd)
        assert protocol.read_frame(read_fd) == b"one"
        assert protocol.read_frame(read_fd) == b""
        assert protocol.read_frame(read_fd) is None  # clean EOF between frames
    finally:
        os.close(read_fd)


def test_a_frame_larger_than_the_pipe_buffer_goes_through() -> None:
    read_fd, write_fd = os.pipe()
    big = b"y" * 20_000_000  # far over a pipe's 64 KiB
    received = []
    reader = threading.Thread(target=lambda: received.append(protocol.read_frame(read_fd)))
    reader.start()
    try:
        protocol.write_all(write_fd, protocol.frame(big))
    finally:
        os.close(write_fd)
        reader.join(10)
        os.close(read_fd)
    assert received == [big]


@pytest.mark.parametrize("cut", [2, 4, 10])
def test_eof_inside_a_frame_is_an_error(cut: int) -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, protocol.frame(b'{"hello": "world"}')[:cut])
        os.close(write_fd)
        with pytest.raises(TruncatedFrame):
            protocol.read_frame(read_fd)
    finally:
        os.close(read_fd)


def test_a_request_carries_the_input_exactly_as_postgres_returned_it() -> None:
    raw = b'{"n": 1, "text": "caf\xc3\xa9 \\"quoted\\"", "nested": [null, 0, "", false]}'
    body = FrameDecoder().feed(protocol.encode_request(
        7, 2**62, b"5f8a7c1e-3c3a-4a4e-9a5e-2b8b7a1e9c00", b"flow_1", b"step_2", 3, 2, 1500,
        True, raw))[0]
    task = protocol.decode_request(body)
    assert task.input == orjson.loads(raw)
    assert (task.task_id, task.token, task.flow_slug, task.step_slug) == (7, 2**62, "flow_1", "step_2")
    assert (task.task_index, task.attempt, task.timeout_ms, task.input_is_flow_input) == (3, 2, 1500, True)
    assert task.run_id == uuid.UUID("5f8a7c1e-3c3a-4a4e-9a5e-2b8b7a1e9c00")


def test_a_decoded_task_round_trips() -> None:
    task = ClaimedTask(7, 12345, uuid.uuid4(), "f", "s", 2, 3, 1500, {"a": [1]}, True)
    assert protocol.decode_request(FrameDecoder().feed(protocol.request_for(task))[0]) == task


def test_an_answer_keeps_the_output_bytes_it_was_given() -> None:
    output = b'{"text":"line one\\nline two"}'
    body = FrameDecoder().feed(protocol.encode_answer({"task_id": 3, "ok": True}, output))[0]
    answer = protocol.decode_answer(body)
    assert answer.ok and answer.task_id == 3
    assert answer.output == output, "the supervisor passes it on without decoding it"


def test_a_failed_answer_has_no_output() -> None:
    body = FrameDecoder().feed(protocol.encode_answer({"task_id": 3, "ok": False, "error": "x\ny"}))[0]
    answer = protocol.decode_answer(body)
    assert not answer.ok and answer.output is None and answer.meta["error"] == "x\ny"


def test_an_answer_whose_meta_is_not_json_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="not valid JSON"):
        protocol.decode_answer(b"{nope\n1")
