"""Laws of the OZOLITH log, as Hypothesis properties (profile from tests/conftest.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from snapstore.ozolith import OzolithLog, verify_chain
from snapstore.ozolith.canonical import (
    canonical_text,
    entry_head_tail,
    line_text,
    parse_line,
)
from snapstore.ozolith.entry import LogEntry, Sealer, make_entry

from .ozolith_client_reference import read_lines, reference_verify

KEY = "9e" * 32

# Text with everything JSON escaping has to get right: quotes, backslashes,
# control characters, non-ASCII, astral characters and lone surrogates.
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from('"\\/\x00\x1f\x7f\n\t{}[]:,'),
        st.characters(codec="utf-8"),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    ),
    max_size=12,
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(texts, json_values, max_size=5)
appends = st.tuples(
    st.one_of(st.sampled_from(["exchange", "sidebar_spawn", "anchor_created"]), texts.filter(bool)),
    texts,
    st.sampled_from(["human", "assistant", "system"]),
    payloads,
)


def same_json(a: Any, b: Any) -> bool:
    """Equality that treats -0.0 and 0.0 apart, as the canonical form does."""
    return canonical_text(a) == canonical_text(b) and a == b


@settings(max_examples=40)
@given(st.lists(st.one_of(appends, st.just("anchor")), min_size=1, max_size=8))
def test_any_sequence_of_appends_verifies_after_reload(steps: list) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ozolith.jsonl"
        written = []
        for step in steps:
            log = OzolithLog(path, key=KEY)  # a fresh instance each time: nothing cached
            if step == "anchor":
                log.create_anchor("property")
                written.append(log.last())
            else:
                written.append(log.append(*step))
        report = verify_chain(path, KEY)
        assert report.ok, report.findings
        assert report.last_sequence == len(written)
        reloaded = list(OzolithLog(path, key=KEY).entries())
        assert [e.to_dict() for e in reloaded] == [e.to_dict() for e in written]
        assert reference_verify(str(path), KEY) == (True, None)
        assert [e.to_dict() for e in reloaded] == read_lines(str(path))


@given(st.integers(min_value=0, max_value=2**63), texts, texts, texts, texts, payloads, texts)
def test_entry_text_is_the_canonical_form_of_its_fields(sequence, timestamp, previous, event_type, actor,
                                                       payload, signature) -> None:
    fields = {"sequence": sequence, "timestamp": timestamp, "previous_hash": previous,
              "event_type": event_type, "context_id": actor, "actor": actor, "payload": payload}
    head, tail = entry_head_tail(fields)
    reference = dict(fields)
    assert head + tail == json.dumps(reference, sort_keys=True, separators=(",", ":"))
    reference["signature"] = signature
    hashed = head + '"signature":' + json.dumps(signature) + "," + tail
    assert hashed == json.dumps(reference, sort_keys=True, separators=(",", ":"))
    line_fields = dict(reference, entry_hash=previous)
    sealer = Sealer(KEY.encode())
    expected_hash = hashlib.sha256(hashed.encode()).hexdigest()
    expected_signature = hmac.new(KEY.encode(), (head + tail).encode(), hashlib.sha256).hexdigest()
    for line, layout_ok in ((json.dumps(line_fields), True), (json.dumps(line_fields, indent=1), False)):
        assert sealer.check(line_fields, line) == (
            expected_hash == previous, expected_signature == signature, expected_hash, layout_ok)
    assert sealer.check(dict(line_fields, signature=expected_signature))[1]


@given(st.binary(max_size=100))
def test_hmac_is_rfc_2104(key: bytes) -> None:
    text = "the canonical text ü"
    assert Sealer(key).sign(text) == hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


@given(json_values)
def test_encoders_match_json_dumps(value: Any) -> None:
    assert canonical_text(value) == json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert line_text(value) == json.dumps(value)


@given(st.one_of(json_values.map(json.dumps).map(str.encode), st.binary(max_size=40)))
def test_parse_line_is_json_loads(raw: bytes) -> None:
    try:
        expected: Any = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:
        expected = type(exc)
    try:
        actual: Any = parse_line(raw)
    except (ValueError, RecursionError) as exc:
        actual = type(exc)
    if isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual)
    else:
        assert actual == expected or same_json(actual, expected)


@given(appends)
def test_a_line_round_trips_byte_for_byte(step) -> None:
    entry = make_entry(KEY.encode(), sequence=1, previous_hash="", event_type=step[0], context_id=step[1],
                       actor=step[2], payload=step[3])
    line = entry.to_line()
    again = LogEntry.from_dict(json.loads(line))
    assert again.to_line() == line
    assert again.verify(KEY.encode())
