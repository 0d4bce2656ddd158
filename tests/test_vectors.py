"""Pinned canonical bytes and ids: if one of these changes, every stored id changes."""

from __future__ import annotations

import blake3
import pytest

from snapstore.objects import (
    PAGE_SIZE, PAGE_THRESHOLD, Chunk, Event, LogLink, MemoryRef, Node, Page, Snapshot, State, decode, encode,
    page_children,
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
    # A wide node (more than PAGE_THRESHOLD children, format 3) names pages instead of children.
    (
        Node(id="SB-1", fields={"status": "active"}, memory={"local_memory": MemoryRef("1" * 64, 3)},
             pages=("6" * 64, "7" * 64)),
        "node",
        b'{"fields":{"status":"active"},"id":"SB-1","memory":{"local_memory":{"count":3,"head":"'
        + b"1" * 64 + b'"}},"pages":["' + b"6" * 64 + b'","' + b"7" * 64 + b'"],"v":1}',
        "fa9dfd20b778937ffc06060975a5d8e1f0aa4ba53035939eed9cb3c9a1d5eda8",
    ),
    # ... and, when its child_sidebar_ids is exactly its children in order, leaves it to the pages.
    (
        Node(id="SB-1", fields={"status": "active"}, memory={"local_memory": MemoryRef("1" * 64, 3)},
             pages=("6" * 64, "7" * 64), listed=True),
        "node",
        b'{"fields":{"status":"active"},"id":"SB-1","listed":true,"memory":{"local_memory":{"count":3,"head":"'
        + b"1" * 64 + b'"}},"pages":["' + b"6" * 64 + b'","' + b"7" * 64 + b'"],"v":1}',
        "4f5fde40fe515966ae240d3cb6091eeef1bdffe9c7b3a8a431cd4ae78a6488a4",
    ),
    (
        Page(children=(("SB-2", "0" * 64), ("SB-3", "8" * 64))),
        "page",
        b'{"children":[["SB-2","' + b"0" * 64 + b'"],["SB-3","' + b"8" * 64 + b'"]],"v":1}',
        "647e8988bec30c85e9ade85fd313f53cdc30846b75b89cc79c10e4d6f15be59e",
    ),
    (
        Page(pages=("6" * 64, "7" * 64)),
        "page",
        b'{"pages":["' + b"6" * 64 + b'","' + b"7" * 64 + b'"],"v":1}',
        "4a6af2686f6309e095b69ec594b2302cb941e353b661adb3d4923a19c64d244f",
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


IDS = ["chunk", "node", "node-paged", "node-paged-listed", "page-leaf", "page-interior", "state", "snapshot"]


@pytest.mark.parametrize("obj, kind, body, oid", VECTORS, ids=IDS)
def test_exact_bytes_and_id(obj, kind, body, oid):
    assert encode(obj) == (kind, body, oid)


@pytest.mark.parametrize("obj, kind, body, oid", VECTORS, ids=IDS)
def test_id_is_blake3_of_header_and_body(obj, kind, body, oid):
    # Recomputed here from the documented rule, independently of snapstore.objects.
    header = kind.encode() + b" " + str(len(body)).encode() + b"\x00"
    assert blake3.blake3(header + body).hexdigest() == oid


@pytest.mark.parametrize("obj, kind, body, oid", VECTORS, ids=IDS)
def test_decode_gives_the_object_back(obj, kind, body, oid):
    assert decode(kind, body) == obj


def test_kinds_are_domain_separated():
    body = b'{"v":1}'
    ids = {encode_kind for encode_kind in ("chunk", "node", "page", "state", "snapshot")}
    from snapstore.objects import hash_object

    assert len({hash_object(k, body) for k in ids}) == 5


@pytest.mark.parametrize("count, top, node_id", [
    # 33 children: two leaf pages (32 + 1), named by the node.
    (33, ("bc85cf9a22a1c25b3252e9d5e45d480fcfd19a169fdb9afcd326ad4a42d7ca2d",
          "f20136e4229313a20c981092a13d064ebfe3c744c87b8c2aa642b64ee023fd4e"),
     "440b5cc4d2f4d5f545c8df7167c88dac2ca4bbee16259f92df6052f136e7fb15"),
    # 1,100 children: 35 leaf pages under two interior pages (32 + 3), named by the node.
    (1100, ("5111163522a1e8ac3e2dfb72ba13ac22cdf88921bffdcf40f43b7e0a2a48bc64",
            "1ffb243fa104c0b614248e1e75e66018b947a16f90b1d1a7646f4fb604bc18cd"),
     "2ad2e262bc7e2ef0057220af01aba7fcb994f02b375f4d34df16d21d4a4bb4bf"),
])
def test_pinned_page_layout(count, top, node_id):
    """The pages of a wide node are fixed by the format: same children, same page ids, same node id."""
    assert (PAGE_THRESHOLD, PAGE_SIZE) == (32, 32)
    children = tuple((f"SB-{i}", f"{i:064x}") for i in range(2, 2 + count))
    assert page_children(children)[0] == top
    assert encode(Node(id="SB-1", fields={}, pages=top))[2] == node_id
