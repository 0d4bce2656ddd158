"""The direct copy that stands in for a JSON round trip: same value, same key order, same errors."""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapstore.errors import InvalidInput
from snapstore.objects import Chunk, canonical_json, encode
from snapstore.ozolith.canonical import NotPlain, json_round_trip, plain_copy
from snapstore.ozolith.entry import make_entry, utc_timestamp
from snapstore.tree import Chain


class Number(enum.IntEnum):
    ONE = 1


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types, dict keys in the same order (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _shares_containers(a: Any, b: Any) -> bool:
    if isinstance(a, dict | list) and a is b:
        return True
    if isinstance(a, dict):
        return any(_shares_containers(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return any(_shares_containers(x, y) for x, y in zip(a, b, strict=True))
    return False


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


ODD_VALUES = [
    {"b": 1, "a": [1, 2.5, -0.0, None, True, False, "x"]},
    {"t": (1, 2)},  # a tuple becomes a list
    {1: "int key", "1": "str key"},  # the round trip keeps the last
    {True: 1, None: 2, 2.5: 3},
    {"pair": "\ud83d\ude00", "lone": "\ud800"},  # a surrogate pair becomes one character
    {"\ud83d\ude00": "key"},
    {"caf\u00e9 \U0001f600": "\u00fc\u2014\U0001f600"},
    {"nan": math.nan, "inf": math.inf, "-inf": -math.inf},
    {"big": 10**1300, "huge": 10**5000},  # beyond 4,300 digits: ValueError
    {"enum": Number.ONE},
    {"ordered": OrderedDict([("z", 1), ("a", 2)])},
    {"subclass": type("S", (str,), {})("text")},
    {"float": type("F", (float,), {})(1.5)},
    {"bad": object()},
    {"bytes": b"x"},
    {"deep": _nested(5000)},  # nested too deeply: RecursionError
]


def _outcome(function: Any, value: Any) -> tuple[str, Any]:
    try:
        return "value", function(value)
    except (TypeError, ValueError, RecursionError) as exc:
        return type(exc).__name__, None


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_json_round_trip_is_loads_of_dumps(value):
    expected = _outcome(lambda v: json.loads(json.dumps(v)), value)
    got = _outcome(json_round_trip, value)
    assert got[0] == expected[0] and _same(got[1], expected[1])


def test_json_round_trip_of_a_circular_value_raises_as_dumps_does():
    value: dict[str, Any] = {}
    value["self"] = value
    with pytest.raises(ValueError, match="Circular"):
        json_round_trip(value)


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_a_sorted_plain_copy_is_loads_of_the_canonical_bytes_or_refused(value):
    try:
        expected = json.loads(canonical_json(value))
    except (InvalidInput, RecursionError):
        return  # canonical_json refuses it; Chain.append never gets that far
    try:
        got = plain_copy(value, sort_keys=True)
    except NotPlain:
        return  # left to the round trip
    assert _same(got, expected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text() | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
    | st.tuples(inner, inner),
    max_leaves=20,
)


@given(json_values)
def test_plain_copies_match_the_round_trips(value):
    assert _same(json_round_trip(value), json.loads(json.dumps(value)))
    try:
        canonical = json.loads(canonical_json(value))
    except InvalidInput:
        return
    try:
        assert _same(plain_copy(value, sort_keys=True), canonical)
    except NotPlain:
        pass


def test_a_plain_copy_shares_no_container_with_its_source():
    value = {"a": {"b": [1, {"c": []}]}, "d": []}
    for copy in (plain_copy(value), plain_copy(value, sort_keys=True), json_round_trip(value)):
        assert copy == value and not _shares_containers(copy, value)


def test_make_entry_owns_its_payload():
    payload = {"nested": {"list": [1, 2]}, "text": "caf\u00e9"}
    entry = make_entry(b"key", sequence=1, previous_hash="", event_type="exchange", context_id="SB-1",
                       actor="system", payload=payload, timestamp="2025-12-05T09:30:01Z")
    assert entry.payload == payload and not _shares_containers(entry.payload, payload)
    payload["nested"]["list"].append(3)
    assert entry.payload["nested"]["list"] == [1, 2]
    odd = make_entry(b"key", sequence=1, previous_hash="", event_type="exchange", context_id="SB-1",
                     actor="system", payload={"t": (1, 2), 3: "x"}, timestamp="2025-12-05T09:30:01Z")
    assert odd.payload == {"t": [1, 2], "3": "x"}  # normalised as a reader will see it


def test_a_chain_keeps_the_copy_its_chunk_decodes_to():
    for item in ({"user": "caf\u00e9", "assistant": "x", "exchange_id": "EXCH-1", "n": {"z": 1, "a": [2.5]}},
                 {"t": (1, 2), "pair": "\ud83d\ude00"}, "just text", [1, "two"]):
        objects: dict = {}
        chain = Chain().append(item, objects)
        (_, body), = objects.values()
        assert _same(chain.items[0], json.loads(body)["item"])
        assert encode(Chunk(prev=None, index=0, item=chain.items[0]))[1] == body


@pytest.mark.parametrize("moment", [
    datetime(2025, 12, 5, 9, 30, 1, 123456, tzinfo=UTC),
    datetime(2025, 12, 5, 9, 30, 1, tzinfo=UTC),
    datetime(2025, 12, 5, 9, 30, 1, 5, tzinfo=UTC),
])
def test_the_current_time_is_formatted_as_an_explicit_one(moment, monkeypatch):
    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return moment.astimezone(tz)

    expected = utc_timestamp(moment)
    monkeypatch.setattr("snapstore.ozolith.entry.datetime", Clock)
    assert utc_timestamp() == expected
    assert utc_timestamp(moment.astimezone(timezone(timedelta(hours=2)))) == expected
