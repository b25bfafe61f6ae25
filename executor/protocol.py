"""The wire between the supervisor and its executor processes.

Both ends of the pipe import this module; nothing else defines the format.

A frame is a 4-byte big-endian length, then that many bytes of body.

Request (supervisor -> executor), one per task, a JSON object:

    {"task_id": int, "token": int, "run_id": str, "flow_slug": str,
     "step_slug": str, "task_index": int, "attempt": int, "timeout_ms": int,
     "input_is_flow_input": bool, "input": <JSON>}

and, when the claim carried the run's input for a task whose input is
something else, a newline and that flow input as JSON: the executor decodes
it only if the handler reads `ctx.flow_input`.

The supervisor builds it by concatenation around the inputs exactly as
Postgres returned them (JSON text, which never holds a raw newline): it
never decodes a handler's input.

Answer (executor -> supervisor), exactly one per request, in order: a JSON
object on one line (the meta), and for a successful task a newline and the
output as JSON. The supervisor decodes the meta only and passes the output
bytes to Postgres untouched.

    {"task_id": int, "ok": true, "duration_s": float, "max_rss_kb": int}\\n<output JSON>
    {"task_id": int, "ok": false, "error": str, "error_type": str | null,
     "traceback": str | null, "timed_out": bool, "duration_s": float,
     "max_rss_kb": int}

orjson never writes a raw newline inside a document, so the first newline
ends the meta.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from pgflow.task import ClaimedTask

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 30  # 1 GiB: a larger length is a corrupt stream, not a real task
NEWLINE = b"\n"
# Bytes read from a pipe at a time, into a buffer each decoder keeps: a fresh
# bytes object per read this large would cost an mmap and a munmap per read.
READ_CHUNK = 256 * 1024


class FrameError(Exception):
    """The byte stream is not a valid sequence of frames; the peer must be replaced."""


class FrameTooLarge(FrameError):
    pass


class TruncatedFrame(FrameError, EOFError):
    """End of file in the middle of a frame."""


class HasFileno(Protocol):
    def fileno(self) -> int: ...


# -- frames --------------------------------------------------------------------


def frame(body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    _check_length(len(body), max_frame_bytes)
    return HEADER.pack(len(body)) + body


def _check_length(length: int, max_frame_bytes: int) -> None:
    if length > max_frame_bytes:
        raise FrameTooLarge(
            f"frame of {length} bytes exceeds the limit of {max_frame_bytes} bytes "
            "(a corrupt stream, or an input/output far too large to pass through a pipe)"
        )


class FrameDecoder:
    """Incremental: feed it bytes as they arrive, get back whole frame bodies.

    Bytes are appended to one bytearray and consumed from its front (which
    CPython does without moving the rest), and a body is cut out only once all
    of it has arrived, so a 20 MB frame read in 64 KiB pieces costs linear time.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._needed = HEADER.size  # bytes the next frame needs in the buffer
        self._max_frame_bytes = max_frame_bytes
        self._scratch: bytearray | None = None  # read_from's buffer, made on first use

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held; non-zero at EOF means the peer died mid-frame."""
        return len(self._buffer)

    def read_from(self, fd: int) -> list[bytes] | None:
        """One read of what `fd` has (at most READ_CHUNK bytes), and the whole
        frames it completes; None at end of file. A non-blocking fd with
        nothing to read raises BlockingIOError."""
        if self._scratch is None:
            self._scratch = bytearray(READ_CHUNK)
        count = os.readv(fd, [self._scratch])
        if count == 0:
            return None
        with memoryview(self._scratch) as view, view[:count] as data:
            return self.feed(data)

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        self._buffer += data
        bodies: list[bytes] = []
        while len(self._buffer) >= self._needed:
            (length,) = HEADER.unpack_from(self._buffer)
            _check_length(length, self._max_frame_bytes)
            end = HEADER.size + length
            if len(self._buffer) < end:
                self._needed = end
                break
            bodies.append(bytes(self._buffer[HEADER.size:end]))
            del self._buffer[:end]
            self._needed = HEADER.size
        return bodies


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


def read_frame(fd: int | HasFileno, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes | None:
    """Block until one whole frame arrives; its body, or None on a clean EOF between frames."""
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
    assert body is not None
    return bytes(body)


def write_all(fd: int | HasFileno, data: bytes) -> None:
    fd = _fd(fd)
    with memoryview(data) as view:
        written = 0
        while written < len(data):
            written += os.write(fd, view[written:])


# -- requests ------------------------------------------------------------------

_REQUEST = (
    b'{"task_id":%d,"token":%d,"run_id":"%s","flow_slug":"%s","step_slug":"%s",'
    b'"task_index":%d,"attempt":%d,"timeout_ms":%d,"input_is_flow_input":%s,"input":'
)


def encode_request(
    task_id: int, token: int, run_id: bytes, flow_slug: bytes, step_slug: bytes,
    task_index: int, attempt: int, timeout_ms: int, input_is_flow_input: bool, input: bytes,
    flow_input: bytes | None = None,
) -> bytes:
    """One request frame around `input` (and `flow_input`), JSON text used as it is.

    Slugs match ^[a-zA-Z_][a-zA-Z0-9_]*$ (the schema checks it) and run_id is
    a UUID's text, so none of them needs escaping.
    """
    head = _REQUEST % (task_id, token, run_id, flow_slug, step_slug, task_index, attempt,
                       timeout_ms, b"true" if input_is_flow_input else b"false")
    if flow_input is None:
        return frame(b"".join((head, input, b"}")))
    return frame(b"".join((head, input, b"}", NEWLINE, flow_input)))


def request_for(task: ClaimedTask) -> bytes:
    """The request frame of a task whose input is already decoded (tests, tools)."""
    flow_input = task.flow_input_json
    return encode_request(
        task.task_id, task.token, str(task.run_id).encode(), task.flow_slug.encode(),
        task.step_slug.encode(), task.task_index, task.attempt, task.timeout_ms,
        task.input_is_flow_input, orjson.dumps(task.input),
        flow_input.encode() if isinstance(flow_input, str) else flow_input)


def decode_request(body: bytes) -> ClaimedTask:
    """The task a request frame carries; raises ValueError/KeyError/TypeError if malformed.
    A flow input after the request stays JSON text (decoded on first use)."""
    end = body.find(NEWLINE)
    head, flow_input = (body, None) if end < 0 else (body[:end], body[end + 1:])
    data = orjson.loads(head)
    return ClaimedTask(
        task_id=data["task_id"], token=data["token"], run_id=uuid.UUID(data["run_id"]),
        flow_slug=data["flow_slug"], step_slug=data["step_slug"],
        task_index=data["task_index"], attempt=data["attempt"], timeout_ms=data["timeout_ms"],
        input=data["input"], input_is_flow_input=data["input_is_flow_input"],
        flow_input_json=flow_input,
    )


def request_head(body: bytes) -> dict[str, Any]:
    """Everything a request carries but its input (task id, token, run id,
    slugs, ...), or {} if even that is malformed: the executor still names
    the task when the input cannot be decoded (JSON that Postgres accepts
    but Python cannot read: nesting past 1024 levels, a number beyond a
    double's range)."""
    end = body.find(b',"input":')
    try:
        head = orjson.loads(body if end < 0 else body[:end] + b"}")
    except orjson.JSONDecodeError:
        return {}
    return head if isinstance(head, dict) else {}


# -- answers -------------------------------------------------------------------


def encode_answer(meta: dict[str, Any], output: bytes | None = None) -> bytes:
    """An answer frame: the meta line, and for a success the output's JSON."""
    head = orjson.dumps(meta)
    return frame(head if output is None else b"".join((head, NEWLINE, output)))


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer as the supervisor reads it: the meta decoded, the output not."""

    meta: dict[str, Any]
    output: bytes | None  # the output's JSON, for a success

    @property
    def task_id(self) -> int | None:
        value = self.meta.get("task_id")
        return value if isinstance(value, int) else None

    @property
    def ok(self) -> bool:
        return self.meta.get("ok") is True and self.output is not None


def decode_answer(body: bytes) -> Answer:
    """Split an answer frame's body; raises FrameError if the meta is not JSON."""
    end = body.find(NEWLINE)
    head, output = (body, None) if end < 0 else (body[:end], body[end + 1:])
    try:
        meta = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"answer meta is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise FrameError(f"answer meta is not a JSON object: {head[:80]!r}")
    return Answer(meta, output)
