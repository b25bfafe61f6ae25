"""executor.frames: length-prefixed orjson frames, decoded incrementally or read blocking."""

from __future__ import annotations

import os
import threading
import time

import pytest

from executor import frames
from executor.frames import FrameDecoder, FrameError, FrameTooLarge, TruncatedFrame


def test_a_frame_is_a_big_endian_length_then_json() -> None:
    assert frames.encode({"a": 1}) == b"\x00\x00\x00\x07" + b'{"a":1}'


def test_round_trip() -> None:
    message = {"task": {"task_id": 1, "input": [None, 0, "", {"é": 1.5}]}}
    assert FrameDecoder().feed(frames.encode(message)) == [message]


def test_a_frame_fed_byte_by_byte_comes_out_once_whole() -> None:
    decoder = FrameDecoder()
    data = frames.encode({"hello": "world"})
    out = []
    for i in range(len(data)):
        got = decoder.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert got == []
        out += got
    assert out == [{"hello": "world"}]
    assert decoder.buffered == 0


def test_several_frames_in_one_feed_and_a_split_remainder() -> None:
    data = b"".join(frames.encode(n) for n in range(5))
    decoder = FrameDecoder()
    assert decoder.feed(data + data[:3]) == [0, 1, 2, 3, 4]
    assert decoder.buffered == 3
    assert decoder.feed(data[3:]) == [0, 1, 2, 3, 4]


def test_a_20_mb_frame_in_8_kib_pieces_decodes_in_linear_time() -> None:
    big = {"blob": "x" * 20_000_000}
    data = frames.encode(big)
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
        frames.encode("x" * 2000, max_frame_bytes=1024)


def test_the_default_limit_refuses_a_corrupt_length() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_a_body_that_is_not_json_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="not valid JSON"):
        FrameDecoder().feed(b"\x00\x00\x00\x03{x}")


def test_read_and_write_over_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        frames.write_frame(write_fd, {"n": 1})
        frames.write_frame(write_fd, [])
        os.close(write_fd)
        assert frames.read_frame(read_fd) == {"n": 1}
        assert frames.read_frame(read_fd) == []
        assert frames.read_frame(read_fd) is None  # clean EOF between frames
    finally:
        os.close(read_fd)


def test_a_frame_larger_than_the_pipe_buffer_goes_through() -> None:
    read_fd, write_fd = os.pipe()
    big = ["y" * 1000] * 20_000  # 20 MB, far over a pipe's 64 KiB
    received = []
    reader = threading.Thread(target=lambda: received.append(frames.read_frame(read_fd)))
    reader.start()
    try:
        frames.write_frame(write_fd, big)
    finally:
        os.close(write_fd)
        reader.join(10)
        os.close(read_fd)
    assert received == [big]


@pytest.mark.parametrize("cut", [2, 4, 10])
def test_eof_inside_a_frame_is_an_error(cut: int) -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, frames.encode({"hello": "world"})[:cut])
        os.close(write_fd)
        with pytest.raises(TruncatedFrame):
            frames.read_frame(read_fd)
    finally:
        os.close(read_fd)


def test_an_unencodable_object_fails_before_anything_is_written() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(TypeError):
            frames.write_frame(write_fd, {"bad": {1, 2}})
        frames.write_frame(write_fd, "fine")
        assert frames.read_frame(read_fd) == "fine"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_claimed_task_round_trips_through_the_wire_format():
    import uuid

    from pgflow.task import ClaimedTask

    task = ClaimedTask(7, 12345, uuid.uuid4(), "f", "s", 2, 3, 1500, {"a": [1]}, True, 0.25)
    assert ClaimedTask.from_wire(FrameDecoder().feed(frames.encode(task.to_wire()))[0]) == task
