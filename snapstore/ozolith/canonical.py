"""The client's two JSON encodings, and a line parser: pure functions, no I/O.

- canonical text (hashed and signed): ``json.dumps(v, sort_keys=True,
  separators=(',', ':'))``;
- line text (what is written): ``json.dumps(v)`` with its defaults.

``json.dumps`` with options builds a new encoder on every call, which costs
as much as encoding a small entry. Here each encoder is built once from the
same C encoder ``json.dumps`` uses, with the same options, so the output is
identical; only the circular-reference check is left out, and values that
come from JSON text cannot be circular.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

# The C accelerators json itself uses (None on an interpreter without them).
c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
c_make_scanner = getattr(json.scanner, "c_make_scanner", None)

#: How a str is written (ASCII escaping, ``ensure_ascii=True``).
encode_string: Callable[[str], str] = encode_basestring_ascii


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encoder(*, sort_keys: bool, item_separator: str, key_separator: str) -> Callable[[Any], str]:
    if c_make_encoder is None:  # an interpreter without the C accelerator
        return json.JSONEncoder(sort_keys=sort_keys, separators=(item_separator, key_separator)).encode
    encode = c_make_encoder(None, _no_default, encode_basestring_ascii, None,
                            key_separator, item_separator, sort_keys, False, True)

    def text(value: Any) -> str:
        return "".join(encode(value, 0))

    return text


#: ``json.dumps(value, sort_keys=True, separators=(',', ':'))`` for JSON values.
canonical_text = _encoder(sort_keys=True, item_separator=",", key_separator=":")
#: ``json.dumps(value)`` for JSON values: how the client writes a line.
line_text = _encoder(sort_keys=False, item_separator=", ", key_separator=": ")


def entry_head_tail(fields: Mapping[str, Any]) -> tuple[str, str]:
    """The canonical text of an entry's content, cut where ``signature`` sorts in.

    ``head + tail`` is the canonical text of the seven content fields (what
    is signed); ``head + '"signature":<sig>,' + tail`` is that of the eight
    (what is hashed). The text is built key by key in sorted order (actor,
    context_id, event_type, payload, previous_hash, sequence, [signature,]
    timestamp), each value encoded exactly as the encoder does, so it equals
    ``canonical_text`` of those dicts; building it directly skips a sort and a
    second encoding. The fields must have their entry types (int sequence,
    str strings, dict payload).
    """
    head = (
        f'{{"actor":{encode_string(fields["actor"])},"context_id":{encode_string(fields["context_id"])},'
        f'"event_type":{encode_string(fields["event_type"])},"payload":{canonical_text(fields["payload"])},'
        f'"previous_hash":{encode_string(fields["previous_hash"])},"sequence":{int.__repr__(fields["sequence"])},'
    )
    return head, f'"timestamp":{encode_string(fields["timestamp"])}}}'


class NotPlain(ValueError):
    """A value :func:`plain_copy` leaves to a JSON round trip."""


# Ints up to this many bits: far below the 4,300 digits that int <-> str converts by default.
_PLAIN_INT_BITS = 4000


def _plain_copy(value: Any, sort_keys: bool) -> Any:
    kind = type(value)
    if kind is str:
        if not value.isascii():
            value.encode()  # surrogates (which a round trip may pair up) raise UnicodeEncodeError
        return value
    if kind is dict:
        copy = {}
        for name in sorted(value) if sort_keys else value:  # mixed key types: TypeError
            if type(name) is not str:
                raise NotPlain
            if not name.isascii():
                name.encode()
            copy[name] = _plain_copy(value[name], sort_keys)
        return copy
    if kind is list:
        return [_plain_copy(item, sort_keys) for item in value]
    if value is None or kind is bool or (kind is int and value.bit_length() <= _PLAIN_INT_BITS):
        return value
    if kind is float and value - value == 0.0:  # finite: its repr round-trips exactly
        return value
    raise NotPlain


def plain_copy(value: Any, *, sort_keys: bool = False) -> Any:
    """``json.loads(json.dumps(value, sort_keys=sort_keys))`` (any separators, ASCII escaping) built directly.

    Only for a value made of dicts with str keys, lists, strs without
    surrogates, bools, None, ints of moderate size and finite floats, nothing
    circular or nested too deeply: the round trip gives such a value back
    equal, with the same types and key order, so a deep copy is the same.
    Anything else (tuples, other key types, subclasses, NaN, ...) raises
    :class:`NotPlain`: do the round trip itself.
    """
    try:
        return _plain_copy(value, sort_keys)
    except (UnicodeEncodeError, TypeError, RecursionError) as exc:
        raise NotPlain from exc


def json_round_trip(value: Any) -> Any:
    """``json.loads(json.dumps(value))``: the same result or the same exception, faster for plain values."""
    try:
        return plain_copy(value)
    except NotPlain:
        return json.loads(json.dumps(value))


_decoder = json.JSONDecoder()
#: ``scan_value(text, 0) -> (value, end)``: the decoder's scanner; StopIteration if no value starts there.
scan_value = c_make_scanner(_decoder) if c_make_scanner is not None else json.scanner.make_scanner(_decoder)  # type: ignore[arg-type]


def parse_line(raw: bytes | str) -> Any:
    """A line's JSON value as the client reads it: UTF-8 text, then ``json.loads``.

    Same value or same ValueError as ``json.loads(raw.decode())`` (tested), with
    less per-call overhead: a line that is one JSON value with nothing around
    it (every line the client writes) is scanned directly; anything else goes
    to ``json.loads`` so errors read as usual.
    """
    text = raw.decode() if isinstance(raw, bytes) else raw  # UnicodeDecodeError is a ValueError
    try:
        value, end = scan_value(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value
