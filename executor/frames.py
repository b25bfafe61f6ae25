"""Frames on the parent <-> child pipes: a 4-byte big-endian unsigned length, then
that many bytes of JSON (orjson). One request frame, one answer frame.

`encode` and `FrameDecoder` are pure (the parent feeds the decoder whatever a
non-blocking read returned); `read_frame` / `write_frame` are blocking helpers
for the child, which has nothing else to do while it waits.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Protocol

import orjson

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 30  # 1 GiB: a larger length is a corrupt stream, not a real task


class FrameError(Exception):
    """The byte stream is not a valid sequence of frames; the peer must be replaced."""


class FrameTooLarge(FrameError):
    pass


class TruncatedFrame(FrameError, EOFError):
    """End of file in the middle of a frame."""


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def encode(obj: Any, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame. Raises TypeError (orjson) if `obj` is not JSON, FrameTooLarge if too big."""
    body = orjson.dumps(obj)
    _check_length(len(body), max_frame_bytes)
    return HEADER.pack(len(body)) + body


def _check_length(length: int, max_frame_bytes: int) -> None:
    if length > max_frame_bytes:
        raise FrameTooLarge(
            f"frame of {length} bytes exceeds the limit of {max_frame_bytes} bytes "
            "(a corrupt stream, or an input/output far too large to pass through a pipe)"
        )


def _decode_body(body: Any) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame body is not valid JSON: {exc}") from exc


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get back whole frames.

    Bytes are appended to one bytearray and consumed from its front (which
    CPython does without moving the rest), and a frame is parsed only once all
    of it has arrived, so a 20 MB frame read in 64 KiB pieces costs linear time.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._needed = HEADER.size  # bytes the next frame needs in the buffer
        self._max_frame_bytes = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held; non-zero at EOF means the peer died mid-frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        frames: list[Any] = []
        while len(self._buffer) >= self._needed:
            (length,) = HEADER.unpack_from(self._buffer)
            _check_length(length, self._max_frame_bytes)
            end = HEADER.size + length
            if len(self._buffer) < end:
                self._needed = end
                break
            with memoryview(self._buffer) as view, view[HEADER.size : end] as body:
                frames.append(_decode_body(body))
            del self._buffer[:end]
            self._needed = HEADER.size
        return frames


def _fd(fd: int | HasFileno) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


def _read_exactly(fd: int, size: int, *, eof_ok: bool) -> bytearray | None:
    buffer = bytearray(size)
    got = 0
    with memoryview(buffer) as view:
        while got < size:
            count = os.readv(fd, [view[got:]])
            if count == 0:
                if got == 0 and eof_ok:
                    return None
                raise TruncatedFrame(f"end of file after {got} of {size} bytes of a frame")
            got += count
    return buffer


def read_frame(fd: int | HasFileno, max_frame_bytes: int = MAX_FRAME_BYTES) -> Any | None:
    """Block until one whole frame arrives; None on a clean EOF between frames."""
    fd = _fd(fd)
    header = _read_exactly(fd, HEADER.size, eof_ok=True)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    _check_length(length, max_frame_bytes)
    try:
        body = _read_exactly(fd, length, eof_ok=False)
    except TruncatedFrame as exc:
        raise TruncatedFrame(f"end of file inside a frame of {length} bytes ({exc})") from None
    return _decode_body(body)


def write_frame(fd: int | HasFileno, obj: Any, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
    """Encode and write one frame to a blocking fd, however many writes that takes.

    Encoding happens before the first byte is written, so a TypeError or
    FrameTooLarge leaves the stream intact.
    """
    write_all(fd, encode(obj, max_frame_bytes))


def write_all(fd: int | HasFileno, data: bytes) -> None:
    fd = _fd(fd)
    with memoryview(data) as view:
        written = 0
        while written < len(data):
            written += os.write(fd, view[written:])
