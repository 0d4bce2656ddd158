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
