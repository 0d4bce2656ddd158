"""Encoding laws: decode(encode(x)) == x, ids are stable, malformed bodies are named errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapstore.errors import CorruptObject, InvalidInput
from snapstore.objects import Chunk, MemoryRef, Node, Page, canonical_json, decode, encode

from .factories import json_values

oids = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@given(item=json_values, prev=st.one_of(st.none(), oids), index=st.integers(0, 10**9))
def test_chunk_round_trip(item, prev, index):
    chunk = Chunk(prev=prev, index=index, item=item)
    kind, body, oid = encode(chunk)
    assert decode(kind, body) == chunk
    assert encode(decode(kind, body))[2] == oid
    assert body.isascii()


@given(fields=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       children=st.lists(st.tuples(st.text(min_size=1, max_size=8), oids), max_size=4),
       count=st.integers(0, 10**6), head=oids)
def test_node_round_trip(fields, children, count, head):
    node = Node(id="SB-1", fields=fields, children=tuple(children),
                memory={"local_memory": MemoryRef(head if count else None, count)})
    kind, body, _ = encode(node)
    assert decode(kind, body) == node


@given(value=json_values)
def test_canonical_json_is_deterministic(value):
    assert canonical_json(value) == canonical_json(value)
    import json

    assert json.loads(canonical_json(value)) == value


def test_nul_and_surrogates_survive():
    item = {"text": "a\u0000b\ud800c", "emoji": "\U0001f600"}
    kind, body, _ = encode(Chunk(None, 0, item))
    assert decode(kind, body).item == item


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), b"bytes", {"k": {1, 2}}])
def test_non_json_values_are_refused(value):
    with pytest.raises(InvalidInput):
        canonical_json({"x": value} if not isinstance(value, dict) else value)


@pytest.mark.parametrize("body", [b"not json", b'{"v":2,"prev":null,"index":0,"item":1}',
                                  b'{"v":1,"prev":"zz","index":0,"item":1}', b'{"v":1}', b"[]"])
def test_malformed_bodies_raise_corrupt_object(body):
    with pytest.raises(CorruptObject) as info:
        decode("chunk", body, "abc")
    assert info.value.object_id == "abc"


@given(children=st.lists(st.tuples(st.text(min_size=1, max_size=8), oids), min_size=1, max_size=40),
       pages=st.lists(oids, min_size=1, max_size=40))
def test_page_and_paged_node_round_trip(children, pages):
    for obj in (Page(children=tuple(children)), Page(pages=tuple(pages)),
                Node(id="SB-1", fields={"a": 1}, pages=tuple(pages)),
                Node(id="SB-1", fields={"a": 1}, pages=tuple(pages), listed=True)):
        kind, body, oid = encode(obj)
        assert decode(kind, body) == obj and encode(decode(kind, body))[2] == oid


H = "0" * 64


@pytest.mark.parametrize("kind, body", [
    ("page", b'{"v":1}'),                                                    # neither
    ("page", b'{"v":1,"children":[],"pages":[]}'),                            # both
    ("page", b'{"v":1,"children":[]}'),                                      # an empty leaf
    ("page", b'{"v":1,"pages":[]}'),                                         # an empty interior page
    ("page", b'{"v":1,"pages":["' + H[:-1].encode() + b'"]}'),               # a short id
    ("page", b'{"v":1,"pages":["' + b"A" * 64 + b'"]}'),                   # not lowercase
    ("page", b'{"v":1,"children":[[1,"' + H.encode() + b'"]]}'),             # a context id not a string
    ("page", b'{"v":1,"children":[["SB-1","' + H.encode() + b'","x"]]}'),    # not a pair
    ("page", b'{"v":2,"pages":["' + H.encode() + b'"]}'),                    # unknown format version
    ("node", b'{"v":1,"id":"SB-1","fields":{},"memory":{},"pages":[]}'),
    ("node", b'{"v":1,"id":"SB-1","fields":{},"memory":{},"pages":"' + H.encode() + b'"}'),
    ("node", b'{"v":1,"id":"SB-1","fields":{},"memory":{},"children":[],"pages":["' + H.encode() + b'"]}'),
    ("node", b'{"v":1,"id":"SB-1","fields":{},"memory":{},"children":[],"listed":true}'),   # listed, not paged
    ("node", b'{"v":1,"id":"SB-1","fields":{},"memory":{},"pages":["' + H.encode() + b'"],"listed":false}'),
    ("node", b'{"v":1,"id":"SB-1","fields":{"child_sidebar_ids":[]},"memory":{},"pages":["' + H.encode()
     + b'"],"listed":true}'),                                                # the list both ways
])
def test_malformed_pages_and_paged_nodes_raise_corrupt_object(kind, body):
    with pytest.raises(CorruptObject):
        decode(kind, body, "abc")


def test_a_page_or_node_cannot_be_encoded_ambiguously():
    for obj in (Page(), Page(children=(("SB-1", H),), pages=(H,)),
                Node(id="SB-1", fields={}, children=(("SB-2", H),), pages=(H,)),
                Node(id="SB-1", fields={}, children=(("SB-2", H),), listed=True),
                Node(id="SB-1", fields={"child_sidebar_ids": ["SB-2"]}, pages=(H,), listed=True)):
        with pytest.raises(InvalidInput):
            encode(obj)


def test_a_trained_dictionary_compresses_objects_it_never_saw_better_than_plain_zstd():
    """The store's dictionary (fixed FastCOVER parameters, no search) earns its place on new objects."""
    import random

    import zstandard

    from snapstore.compression import DICTIONARY_SIZE, LEVEL, train_dictionary

    from .factories import context, exchange

    rng = random.Random(7)
    words = ["context", "sidebar", "merge", "résumé", "данные", "测试", "🙂", "def f(x):", "return", "the"]
    bodies = []
    for n in range(1600):
        cid = f"SB-{n % 40}"
        text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
        bodies.append(encode(Chunk(prev="ab" * 32, index=n, item=exchange(n, cid, text)))[1])
        node = context(cid, parent="SB-0", exchanges=0, status=rng.choice(["active", "paused", "merged"]))
        bodies.append(canonical_json(node))
    rng.shuffle(bodies)
    sample, held_out = bodies[:2000], bodies[2000:]
    trained = train_dictionary(sample)
    assert trained is not None
    dict_id, data = trained
    assert 0 < len(data) <= DICTIONARY_SIZE and dict_id == zstandard.ZstdCompressionDict(data).dict_id()
    with_dict = zstandard.ZstdCompressor(level=LEVEL, dict_data=zstandard.ZstdCompressionDict(data))
    plain = zstandard.ZstdCompressor(level=LEVEL)
    assert sum(len(with_dict.compress(b)) for b in held_out) < 0.8 * sum(len(plain.compress(b)) for b in held_out)
    assert train_dictionary(bodies[:100]) is None  # too few samples to be worth it


def _loads_outcome(parse, raw):
    try:
        return "ok", repr(parse(raw))  # repr: NaN equals NaN, key order counts
    except Exception as exc:  # the exception's class and text must match too
        return "error", type(exc).__name__, str(exc)


@given(raw=st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: canonical_json(v)),
    st.tuples(json_values, st.sampled_from(["", " ", "\n", "x", "]", "{}"])).map(
        lambda t: canonical_json(t[0]) + t[1].encode()),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
))
def test_parsing_a_body_is_json_loads(raw):
    """decode's fast parse of a body gives what json.loads gives, value or error, for any bytes."""
    import json

    from snapstore.objects import _parse_body

    assert _loads_outcome(_parse_body, raw) == _loads_outcome(json.loads, raw)
