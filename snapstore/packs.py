"""Packs: many cold objects (or audit-log lines) compressed together in one frame.

A commit stores each new object on its own ("loose"), compressed with the
store's dictionary: that keeps a commit to one small transaction. But a
conversation's history is mostly versions of the same few nodes and pages,
and compressed one by one every version costs nearly its full size again (a
page of 32 child ids is ~900 bytes whichever child changed). Compressed
together, versions of one object shrink to little more than what changed:
on the 10,000-exchange benchmark store, 57 MB of object bodies take 22.9 MB
loose and 4.2 MB in packs (docs/benchmarks.md).

``Repository.pack`` (run by ``snap pack``, at a clean shutdown, and after
many commits) moves cold loose objects into packs, as git's ``gc`` does.
This module is the pack format only; where packs are kept is the backend's
business (the embedded SQLite backend; docs/format.md).

An object pack, once decompressed::

    b"SNPK" version:u8 count:u32
    count x ( id_prefix:8 bytes  kind_length:u8 kind:ascii  size:u32 )
    the bodies, in the same order, back to back

A member is named by the first 8 bytes of its id only (the full ids, 32
random bytes each, would be a fifth of a pack): a reader finds it by the
prefix and hashes its body to check that it is the object asked for (a
pack never holds two members with one prefix, and the store never packs an
object whose prefix another packed object holds).

A log pack is the lines, each followed by ``\\n`` (a line of the client's
JSON Lines format never contains one). Both are stored as a zstd frame
(plain, no dictionary) followed by the CRC-32 of the frame, like loose
objects (compression.py), so any change to the stored bytes is detected.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard

from .errors import CorruptObject
from .objects import hash_object

MAGIC = b"SNPK"
VERSION = 1
LEVEL = 3
# Packs of lines are small (128 lines), and level 6 makes log lines 7% smaller than level 3 for
# little time (docs/benchmarks.md).
LINES_LEVEL = 6
# A pack holds at most this many objects or raw bytes: big enough that versions of one
# node share a frame, small enough that reading one object (the whole frame is
# decompressed, ~1 ms per MB here) stays cheap.
MAX_MEMBERS = 1024
MAX_BYTES = 1 << 20
# A pack of lines whose zstd frame says it holds more than LINES_RATIO times the frame's length, and more
# than LINES_FLOOR, is refused before it is decompressed (see _check_lines_declared), and never written.
LINES_RATIO = 1024
LINES_FLOOR = 256 << 20
_HEAD = struct.Struct("<4sBI")
_SIZE = struct.Struct("<I")
# The longest a pack's header and index can be: MAX_MEMBERS entries of an 8-byte prefix, a kind of
# up to 255 bytes after its length byte, and a u32 size.
_MAX_INDEX = _HEAD.size + MAX_MEMBERS * (8 + 1 + 255 + 4)


@dataclass(frozen=True)
class Member:
    id: str
    kind: str
    body: bytes


class Pack:
    """A decompressed object pack: bodies by id prefix."""

    __slots__ = ("data", "index", "_ids")

    def __init__(self, data: bytes, index: dict[str, tuple[str, int, int]]) -> None:
        self.data = data
        self.index = index  # id prefix (16 hex digits) -> (kind, offset, size)
        self._ids: dict[str, str] = {}  # id prefix -> the id its body hashes to

    def _member(self, prefix: str) -> tuple[str, str, bytes]:
        kind, offset, size = self.index[prefix]
        body = self.data[offset : offset + size]
        oid = self._ids.get(prefix)
        if oid is None:
            oid = self._ids[prefix] = hash_object(kind, body)
        return oid, kind, body

    def get(self, oid: str) -> tuple[str, bytes] | None:
        """Kind and body of ``oid`` if this pack holds it."""
        if oid[:16] not in self.index:
            return None
        actual, kind, body = self._member(oid[:16])
        return (kind, body) if actual == oid else None

    def members(self) -> dict[str, tuple[str, bytes]]:
        """Every member by full id (hashing each body once)."""
        out = {}
        for prefix in self.index:
            oid, kind, body = self._member(prefix)
            out[oid] = (kind, body)
        return out

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """The full ids of the members whose id starts with the hex ``prefix``."""
        head = prefix[:16]
        return [oid for p in self.index if p.startswith(head)
                for oid in [self._member(p)[0]] if oid.startswith(prefix)]

    @property
    def raw_size(self) -> int:
        return len(self.data)


def seal(frame: bytes) -> bytes:
    return frame + zlib.crc32(frame).to_bytes(4, "little")


def _frame(stored: bytes, what: str) -> bytes:
    """The zstd frame of stored pack bytes, its CRC-32 checked; ValueError naming ``what`` if damaged."""
    if len(stored) < 5:
        raise ValueError(f"{what} is only {len(stored)} bytes long")
    frame, check = stored[:-4], stored[-4:]
    if zlib.crc32(frame).to_bytes(4, "little") != check:
        raise ValueError(f"{what} fails its CRC-32 check")
    return frame


def _decompress(frame: bytes, what: str) -> bytes:
    # A frame without a content size is refused by zstandard (snapstore always writes one).
    try:
        return zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"{what} cannot be decompressed: {exc}") from None


def unseal(stored: bytes, what: str) -> bytes:
    """The zstd frame of stored pack bytes, decompressed; ValueError naming ``what`` if damaged."""
    return _decompress(_frame(stored, what), what)


def encode_objects(members: Sequence[Member]) -> bytes:
    """The stored bytes of an object pack."""
    parts = [_HEAD.pack(MAGIC, VERSION, len(members))]
    for m in members:
        kind = m.kind.encode("ascii")
        parts.append(bytes.fromhex(m.id[:16]) + bytes([len(kind)]) + kind + _SIZE.pack(len(m.body)))
    parts.extend(m.body for m in members)
    return seal(zstandard.ZstdCompressor(level=LEVEL).compress(b"".join(parts)))


def _entries(data: bytes, pack_id: int) -> tuple[list[tuple[str, str, int]], int]:
    """The ``(prefix, kind, size)`` of each member a pack's header lists, and where the bodies start."""
    magic, version, count = _HEAD.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"pack {pack_id} has an unknown header")
    if count > MAX_MEMBERS:
        raise ValueError(f"pack {pack_id} lists {count} members, more than a pack holds ({MAX_MEMBERS})")
    pos = _HEAD.size
    entries = []
    for _ in range(count):
        prefix = data[pos : pos + 8].hex()
        klen = data[pos + 8]
        kind = data[pos + 9 : pos + 9 + klen].decode("ascii")
        (size,) = _SIZE.unpack_from(data, pos + 9 + klen)
        entries.append((prefix, kind, size))
        pos += 13 + klen
    return entries, pos


def _check_declared(frame: bytes, pack_id: int) -> None:
    """Refuse a frame saying it holds more than its pack's index adds up to, before decompressing it.

    zstd allocates what a frame says it holds before writing into it, and a
    few KB of frame can say 10 GB. A pack holds at most :data:`MAX_BYTES` of
    bodies (or one bigger object alone) plus its index: a frame declaring no
    more than that is decompressed as it is; a bigger one is believed only if
    its header and index (at most :data:`_MAX_INDEX` bytes, read through a
    streaming decompressor) add up to exactly the size it declares.
    """
    try:
        declared = zstandard.frame_content_size(frame)
        if declared <= MAX_BYTES + _MAX_INDEX:  # also -1, unknown: zstandard refuses such a frame
            return
        reader = zstandard.ZstdDecompressor().stream_reader(frame)
        head = bytearray()
        while len(head) < _MAX_INDEX and (chunk := reader.read(_MAX_INDEX - len(head))):
            head += chunk
    except zstandard.ZstdError as exc:
        raise ValueError(f"pack {pack_id} cannot be decompressed: {exc}") from None
    entries, pos = _entries(bytes(head), pack_id)
    total = pos + sum(size for _, _, size in entries)
    if total != declared:
        raise ValueError(f"pack {pack_id}'s zstd frame says it holds {declared} bytes, its index {total}")


def decode_objects(stored: bytes, pack_id: int, wanted: str = "?") -> Pack:
    """Parse a stored object pack; :class:`CorruptObject` names ``wanted`` and the pack if it is damaged."""
    what = f"pack {pack_id}"
    try:
        frame = _frame(stored, what)
        _check_declared(frame, pack_id)
        data = _decompress(frame, what)
        entries, pos = _entries(data, pack_id)
        index: dict[str, tuple[str, int, int]] = {}
        for prefix, kind, size in entries:
            if prefix in index:
                raise ValueError(f"pack {pack_id} names two members {prefix}")
            index[prefix] = (kind, pos, size)
            pos += size
        if pos != len(data):
            raise ValueError(f"pack {pack_id} is {len(data)} bytes, its index says {pos}")
    except (ValueError, struct.error, IndexError, UnicodeDecodeError) as exc:
        raise CorruptObject(wanted, f"stored in a damaged pack: {exc}") from None
    return Pack(data, index)


def encode_lines(lines: Sequence[str]) -> bytes:
    """The stored bytes of a pack of lines (log lines, reflog rows).

    ValueError if reading it back would refuse it (:func:`_check_lines_declared`: lines of hundreds of
    MB repeating themselves): such lines stay loose, readable, rather than packed out of reach.
    """
    data = "".join(line + "\n" for line in lines).encode()
    frame = zstandard.ZstdCompressor(level=LINES_LEVEL).compress(data)
    if len(data) > _lines_ceiling(frame):
        raise ValueError(f"{len(data)} bytes of lines compress to {len(frame)}, more than a pack of lines "
                         f"may say it holds ({_lines_ceiling(frame)})")
    return seal(frame)


def _lines_ceiling(frame: bytes) -> int:
    return max(LINES_FLOOR, LINES_RATIO * len(frame))


def _check_lines_declared(frame: bytes) -> None:
    """Refuse a pack of lines whose frame says it holds more than :data:`LINES_RATIO` times its own length
    (and more than :data:`LINES_FLOOR`), before decompressing it.

    zstd allocates what a frame says it holds before writing into it: a 65 KB
    frame of a tampered row can say (and hold) 2 GiB. An object pack's index
    and an object's recorded size say what its frame must hold; a pack of lines
    has neither (its rows' lines and reasons have no size limit, and stores
    written by earlier versions record no size to check against), so its frame
    is bounded by its own length instead. Every line and reflog row carries
    ids and hashes of random hex that zstd cannot shrink, so an honest pack
    compresses a few times to a few tens of times; only lines of hundreds of KB
    repeating themselves could pass 1024 times, and up to LINES_FLOOR any
    frame is believed (the cost of decoding it is bounded by that).
    :func:`encode_lines` refuses to write what this would refuse.
    """
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"cannot be decompressed: {exc}") from None
    ceiling = _lines_ceiling(frame)
    if declared > ceiling:  # -1, unknown, passes here and is refused by zstandard without allocating
        raise ValueError(f"its zstd frame of {len(frame)} bytes says it holds {declared} bytes, more than "
                         f"an honest pack of lines could ({ceiling})")


def decode_lines(stored: bytes, first: int, last: int, count: bool = True) -> list[str]:
    """The lines of a pack of lines; with ``count``, exactly one per sequence ``first``..``last``.

    ValueError (or UnicodeDecodeError) if it is damaged, without decompressing a frame that says it
    holds more than a pack of its length could (:func:`_check_lines_declared`).
    """
    frame = _frame(stored, "the pack")
    _check_lines_declared(frame)
    text = _decompress(frame, "the pack").decode("utf-8")
    lines = text.split("\n")
    if lines[-1] != "" or (count and len(lines) - 1 != last - first + 1):
        raise ValueError(f"the pack holds {len(lines) - 1} lines, expected {last - first + 1}")
    return lines[:-1]


_RAW_HEAD = b"\x28\xb5\x2f\xfd\xa0"
_ONE_BLOCK = 1 << 17  # a zstd block holds at most 128 KiB


def raw_frame(body: bytes) -> bytes:
    """``body`` as stored loose bytes without compressing it: a zstd frame of raw blocks plus CRC.

    A packed object is handed to readers in the form of a loose one, so every
    reader (verify, transfer, fsck) works unchanged; making such a frame is a
    copy, not a compression.
    """
    n = len(body)
    if 0 < n <= _ONE_BLOCK:  # most objects: one raw block, the frame made in one concatenation
        return seal(_RAW_HEAD + _SIZE.pack(n) + (1 | n << 3).to_bytes(3, "little") + body)
    out = bytearray(_RAW_HEAD)  # magic; single segment, 4-byte content size, no dictionary
    out += _SIZE.pack(n)
    if n == 0:
        out += (1).to_bytes(3, "little")  # the last block: raw, empty
    step = _ONE_BLOCK
    for start in range(0, n, step):
        block = body[start : start + step]
        last = 1 if start + step >= n else 0
        out += (last | (len(block) << 3)).to_bytes(3, "little") + block
    return seal(bytes(out))


def prefix_key(oid: str) -> int:
    """The packed-index key of an id: its first 8 bytes as a signed 64-bit integer, order kept."""
    return int(oid[:16], 16) - (1 << 63)


def key_prefix(key: object) -> str:
    """The hex id prefix a packed-index key stands for (what :func:`prefix_key` made it from), to name
    the row; a key that is no 64-bit integer (a damaged row), as it is held."""
    if type(key) is int and -(1 << 63) <= key < (1 << 63):
        return f"{key + (1 << 63):016x}"
    return f"{key!r:.40}"


def prefix_range(prefix: str) -> tuple[int, int]:
    """The packed-index keys of ids starting with the hex ``prefix``."""
    head = prefix[:16]
    return prefix_key((head + "0" * 16)[:16]), prefix_key((head + "f" * 16)[:16])
