"""Plain JSON data: what pgflow accepts as a run input or a step output.

A value must come back to the handler that reads it as it went in, so only
what JSON and Postgres jsonb hold is accepted: dict (str keys), list or
tuple (an array), str, int (64-bit), float (finite), bool and None. The rest
is refused with the path to it and what to send instead, rather than
converted on the way (orjson alone writes NaN and Infinity as null, a
datetime or a UUID as a string the handler would get back instead of the
object):

- NaN and +/-Infinity: JSON has no such numbers;
- datetime, date, time, UUID, Decimal, Enum members that are neither int nor
  str, dataclasses, bytes, sets, generators, ...: convert them explicitly;
- strings holding NUL (jsonb cannot store U+0000) or lone surrogates;
- integers beyond 64 bits; nesting deeper than MAX_DEPTH; a structure that
  contains itself.

The common case costs orjson's C code only: encode, decode, compare. The
value is walked in Python only when that comparison differs (a refusal, or
tuples, which come back as lists), or when it is over 8 MiB of JSON, where a
decoded copy would double the memory it takes.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import gc
import inspect
import math
import re
import uuid
from typing import Any

import orjson

# orjson refuses to encode deeper nesting than this.
MAX_DEPTH = 254
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# A JSON \u0000 escape, not preceded by an escaped backslash (\\u0000 is text).
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_INT_RANGE = (-(2**63), 2**64 - 1)
_GC_PAUSE_BYTES = 1 << 20
_COPY_LIMIT_BYTES = 8 << 20


class NotJsonError(ValueError):
    """The value is not plain JSON data; the message says where and why."""


def encode(value: Any) -> bytes:
    """`value` as JSON bytes, or NotJsonError naming the first part that is
    not plain JSON data (e.g. "$.items[2] is NaN; ...")."""
    try:
        data = orjson.dumps(value, option=_OPTIONS)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise NotJsonError(find_problem(value) or str(exc)) from None
    if b"\\u0000" in data and _ESCAPED_NUL.search(data):
        raise NotJsonError(find_problem(value) or "a string holds a NUL character (U+0000)")
    try:
        problem = None if _comes_back_equal(value, data) else find_problem(value)
    except Exception as exc:  # a subclass whose __eq__ or __iter__ raises
        problem = f"$ could not be checked ({type(exc).__name__}: {exc})"
    if problem is not None:
        raise NotJsonError(problem)
    return data


def undecodable_input(where: str, error: str) -> str:
    """The error of a task whose input Postgres holds but Python cannot decode."""
    return (f"{where}: the task's input cannot be decoded into Python values ({error}); "
            "Postgres accepted it (from SQL), but a handler's input must nest less than 1024 "
            "levels and its numbers must fit a float")


def _comes_back_equal(value: Any, data: bytes) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True  # dumps already refused what these cannot hold
    if len(data) > _COPY_LIMIT_BYTES:
        # A decoded copy would take as much memory again as the value (several
        # times its JSON): walk it instead, slower (about 50 ms a MiB) but flat.
        return find_problem(value) is None
    pause_gc = len(data) >= _GC_PAUSE_BYTES and gc.isenabled()
    if pause_gc:
        # Decoding millions of objects would otherwise start a full collection
        # several times over (measured: 12 MiB of small objects 420 ms -> 120 ms).
        gc.disable()
    try:
        copy = orjson.loads(data)
    except orjson.JSONDecodeError:  # an orjson.Fragment holding something else than JSON
        return False
    finally:
        if pause_gc:
            gc.enable()
    return copy == value  # type: ignore[no-any-return]


def find_problem(value: Any) -> str | None:
    """A sentence on the first part of `value` that is not plain JSON data, or None."""
    return _problem(value, "$", 0, set())


def _problem(value: Any, path: str, depth: int, containers: set[int]) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _text_problem(value, f"{path} (a string)")
    if isinstance(value, int):
        if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            return (f"{path} is an integer beyond 64 bits ({_short(value)}); send it as a "
                    "string")
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return f"{path} is NaN, which JSON cannot hold; send null or leave it out"
        if math.isinf(value):
            return (f"{path} is {'-' if value < 0 else ''}Infinity, which JSON cannot hold; "
                    "send null, a string or a bound")
        return None
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            return (f"{_cut(path)} is nested more than {MAX_DEPTH} levels deep; flatten it")
        if id(value) in containers:
            return f"{_cut(path)} contains itself (a reference cycle); send a copy without it"
        containers.add(id(value))
        try:
            return _container_problem(value, path, depth, containers)
        finally:
            containers.discard(id(value))
    return f"{_cut(path)} is {_describe(value)}"


def _container_problem(value: dict[Any, Any] | list[Any] | tuple[Any, ...], path: str,
                       depth: int, containers: set[int]) -> str | None:
    if not isinstance(value, dict):
        for index, child in enumerate(value):
            found = _problem(child, f"{path}[{index}]", depth + 1, containers)
            if found is not None:
                return found
        return None
    for key, child in value.items():
        if not isinstance(key, str):
            return (f"{_cut(path)} has a key of type {type(key).__name__} ({_short(key)}); "
                    "object keys must be strings")
        found = _text_problem(key, f"{path} key {_short(key)}") or _problem(
            child, f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]", depth + 1,
            containers)
        if found is not None:
            return found
    return None


def _text_problem(text: str, where: str) -> str | None:
    if "\x00" in text:
        return (f"{_cut(where)} holds a NUL character (U+0000), which Postgres jsonb cannot "
                "store; remove it or encode the data (e.g. base64)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{_cut(where)} holds a lone surrogate, which is not valid Unicode"
    return None


def _describe(value: Any) -> str:
    """What the value is, and what to send instead."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        kind = type(value).__name__
        return (f"a {kind} ({value!r}), not JSON; send value.isoformat() and parse it in "
                "the handler")
    if isinstance(value, uuid.UUID):
        return f"a UUID ({value}), not JSON; send str(value)"
    if isinstance(value, decimal.Decimal):
        return f"a Decimal ({value}), not JSON; send str(value) (exact) or float(value)"
    if isinstance(value, enum.Enum):
        return f"an Enum member ({value!r}), not JSON; send value.value"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (f"a dataclass ({type(value).__name__}), not JSON; send "
                "dataclasses.asdict(value)")
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{type(value).__name__}, not JSON; decode them, or base64 them"
    if isinstance(value, set | frozenset):
        return f"a {type(value).__name__}, not JSON; send a list"
    if inspect.isgenerator(value) or inspect.isasyncgen(value) or inspect.iscoroutine(value):
        return f"a {type(value).__name__}, not JSON; return a list (e.g. list(...))"
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}, not JSON"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _cut(path: str, limit: int = 120) -> str:
    return path if len(path) <= limit else path[:limit] + "..."
