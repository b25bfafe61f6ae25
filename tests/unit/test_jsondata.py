"""pgflow.jsondata: plain JSON data in, the same data back; anything else is
refused with the path to it and what to send instead."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Any

import orjson
import pytest

from pgflow import jsondata


class Color(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    SMALL = 1


class Mode(enum.StrEnum):
    FAST = "fast"


@dataclasses.dataclass
class Point:
    x: int


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    inner = root
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return root


def cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"items": []}
    value["items"].append(value)
    return value


@pytest.mark.parametrize("value, path, problem", [
    (float("nan"), "$", "is NaN"),
    ({"a": [1, float("inf")]}, "$.a[1]", "is Infinity"),
    ({"low": -float("inf")}, "$.low", "is -Infinity"),
    ({"when": datetime.datetime(2024, 5, 1, 12)}, "$.when", "datetime"),
    ({"day": datetime.date(2024, 5, 1)}, "$.day", "isoformat()"),
    ({"at": datetime.time(12, 30)}, "$.at", "a time"),
    ({"id": uuid.UUID(int=1)}, "$.id", "send str(value)"),
    ({"price": decimal.Decimal("9.99")}, "$.price", "a Decimal"),
    ({"color": Color.RED}, "$.color", "send value.value"),
    ({"point": Point(1)}, "$.point", "dataclasses.asdict"),
    ({"raw": b"\x00\x01"}, "$.raw", "bytes"),
    ({"tags": {"a"}}, "$.tags", "a set, not JSON; send a list"),
    ((i for i in range(3)), "$", "a generator"),
    ({"name": "a\x00b"}, "$.name", "NUL character"),
    ({"a\x00": 1}, "$ key", "NUL character"),
    ({"text": "\ud800"}, "$.text", "lone surrogate"),
    ({1: "one"}, "$", "key of type int"),
    ({"big": 2**64}, "$.big", "beyond 64 bits"),
    ({"small": -(2**63) - 1}, "$.small", "beyond 64 bits"),
    (cyclic(), "$.items[0]", "contains itself"),
    (nested(jsondata.MAX_DEPTH + 1), "$[0]", f"more than {jsondata.MAX_DEPTH} levels"),
    ({"my key": [object()]}, "$['my key'][0]", "a builtins.object"),
    (orjson.Fragment(b'{"a": NaN}'), "$", "orjson.Fragment"),  # raw bytes, never checked
    ({"raw": orjson.Fragment(b"[1]")}, "$.raw", "orjson.Fragment"),
])
def test_what_is_not_plain_json_is_refused_with_where_and_why(value: Any, path: str,
                                                            problem: str) -> None:
    with pytest.raises(jsondata.NotJsonError) as refused:
        jsondata.encode(value)
    message = str(refused.value)
    assert message.startswith(path) and problem in message


@pytest.mark.parametrize("value", [
    None, True, 0, -(2**63), 2**64 - 1, 1.5, -0.0, 1e308, "", "text", "\\u0000 is text",
    [], {}, {"a": [1, {"b": None}]}, collections.OrderedDict(a=1), Size.SMALL, Mode.FAST,
    nested(jsondata.MAX_DEPTH),
])
def test_plain_json_data_comes_back_equal(value: Any) -> None:
    assert orjson.loads(jsondata.encode(value)) == value


def test_tuples_are_arrays() -> None:
    assert jsondata.encode({"pair": (1, (2, 3))}) == b'{"pair":[1,[2,3]]}'


def test_the_same_object_twice_is_not_a_cycle() -> None:
    shared = {"x": 1}
    assert orjson.loads(jsondata.encode([shared, shared])) == [{"x": 1}, {"x": 1}]


def test_a_value_too_large_to_copy_is_walked_instead(monkeypatch) -> None:
    monkeypatch.setattr(jsondata, "_COPY_LIMIT_BYTES", 100)
    monkeypatch.setattr(jsondata.orjson, "loads", None)  # no decoded copy is made
    assert jsondata.encode({"rows": [{"n": n} for n in range(50)]}).startswith(b'{"rows":')
    with pytest.raises(jsondata.NotJsonError, match=r"\$\.rows\[49\]\.n is NaN"):
        jsondata.encode({"rows": [{"n": n} for n in range(49)] + [{"n": float("nan")}]})


def test_a_container_whose_comparison_raises_is_refused_not_raised() -> None:
    class Touchy(dict):
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("do not compare me")

        __hash__ = None  # type: ignore[assignment]

    with pytest.raises(jsondata.NotJsonError, match="could not be checked.*do not compare me"):
        jsondata.encode(Touchy(a=1))
