"""Pinned canonical bytes and ids: if one of these changes, every stored id changes."""

from __future__ import annotations

import blake3
import pytest

from snapstore.objects import (
    Chunk, Event, LogLink, MemoryRef, Node, Snapshot, State, decode, encode,
)

VECTORS = [
    (
        Chunk(prev=None, index=0, item={
            "exchange_id": "EXCH-1", "user": "h\u00e9llo \u0000 \"q\" \\ \U0001f642",
            "assistant": "ok", "timestamp": "2026-01-05T10:00:00",
        }),
        "chunk",
        b'{"index":0,"item":{"assistant":"ok","exchange_id":"EXCH-1","timestamp":"2026-01-05T10:00:00",'
        b'"user":"h\\u00e9llo \\u0000 \\"q\\" \\\\ \\ud83d\\ude42"},"prev":null,"v":1}',
        "9ba0b099a4d231d4c0dc3f744b5ea1009d3e2444703fc77816d27f260e046442",
    ),
    (
        Node(
            id="SB-1",
            fields={"status": "active", "priority": "normal", "data_refs": {}, "scratchpad": None,
                    "relevance_scores": {"EXCH-1": 0.5}, "created_at": "2026-01-05T10:00:00"},
            children=(("SB-2", "0" * 64),),
            memory={"local_memory": MemoryRef("1" * 64, 3), "inherited_memory": MemoryRef(None, 0)},
        ),
        "node",
        b'{"children":[["SB-2","' + b"0" * 64 + b'"]],"fields":{"created_at":"2026-01-05T10:00:00",'
        b'"data_refs":{},"priority":"normal","relevance_scores":{"EXCH-1":0.5},"scratchpad":null,'
        b'"status":"active"},"id":"SB-1","memory":{"inherited_memory":{"count":0,"head":null},'
        b'"local_memory":{"count":3,"head":"' + b"1" * 64 + b'"}},"v":1}',
        "87fdd7bd72a6867aa81aede70a7c261d64ee94247291fdb143559b787a229fe9",
    ),
    (
        State(roots=(("SB-1", "2" * 64),), active_context_id="SB-2", extra={}),
        "state",
        b'{"active_context_id":"SB-2","extra":{},"roots":[["SB-1","' + b"2" * 64 + b'"]],"v":1}',
        "f91b1f23995c2f3deefd457ba1613eefbea9748ce88fbbce237d91efe3689ca5",
    ),
    (
        Snapshot(conversation="conv-1", root="3" * 64, parents=("4" * 64,),
                 time="2026-01-05T10:00:00.000000Z", event=Event("sidebar_spawn", "SB-2", "spawned"),
                 log=LogLink(7, "5" * 64)),
        "snapshot",
        b'{"conversation":"conv-1","event":{"context_id":"SB-2","message":"spawned","type":"sidebar_spawn"},'
        b'"log":{"entry_hash":"' + b"5" * 64 + b'","sequence":7},"parents":["' + b"4" * 64 + b'"],'
        b'"root":"' + b"3" * 64 + b'","time":"2026-01-05T10:00:00.000000Z","v":1}',
        "4227663f4626fbf7a00d66c904fc9257994f602472b8d8e7e4521bff7a28885b",
    ),
]


@pytest.mark.parametrize("obj, kind, body, oid", VECTORS, ids=[v[1] for v in VECTORS])
def test_exact_bytes_and_id(obj, kind, body, oid):
    assert encode(obj) == (kind, body, oid)


@pytest.mark.parametrize("obj, kind, body, oid", VECTORS, ids=[v[1] for v in VECTORS])
def test_id_is_blake3_of_header_and_body(obj, kind, body, oid):
    # Recomputed here from the documented rule, independently of snapstore.objects.
    header = kind.encode() + b" " + str(len(body)).encode() + b"\x00"
    assert blake3.blake3(header + body).hexdigest() == oid


@pytest.mark.parametrize("obj, kind, body, oid", VECTORS, ids=[v[1] for v in VECTORS])
def test_decode_gives_the_object_back(obj, kind, body, oid):
    assert decode(kind, body) == obj


def test_kinds_are_domain_separated():
    body = b'{"v":1}'
    ids = {encode_kind for encode_kind in ("chunk", "node", "state", "snapshot")}
    from snapstore.objects import hash_object

    assert len({hash_object(k, body) for k in ids}) == 4
