"""zstd compression of object bodies, with an optional trained dictionary per store.

Objects are small JSON documents (a few hundred bytes) that repeat the same
keys and shapes; plain zstd barely compresses them, a dictionary trained on a
store's own objects does (see docs/benchmarks.md). A frame records the id of
the dictionary it was made with (0 for none), so a store can hold frames made
with and without dictionaries and every reader picks the right one. Stored
dictionaries are never changed or deleted.

Stored bytes are the zstd frame followed by the CRC-32 of the frame (4 bytes,
little-endian). The object id already covers the content, but some byte
changes inside a zstd frame decode to the same content (unused header bits,
equivalent entropy tables); the CRC makes any change to the stored bytes
detectable, so a tampered or decayed object is named even when its content
survived.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Mapping

import zstandard

from .errors import CorruptObject

LEVEL = 3
DICTIONARY_SIZE = 16 * 1024
# With a dictionary, zstd sizes its match tables for the dictionary (2^16-2^17
# entries at level 3), and compressing an object of a few KB then mostly
# misses the CPU cache looking them up: a commit's compression took about
# twice as long as with tables of 2^13/2^12 entries, for 0-2% more bytes
# (docs/benchmarks.md, "1. Commit CPU"). Level 3's other parameters are kept.
DICT_HASH_LOG = 13
DICT_CHAIN_LOG = 12
# Training needs a fair sample of objects to beat plain zstd; below this, skip.
MIN_TRAINING_SAMPLES = 256
# FastCOVER's segment and d-mer sizes, fixed. Left at 0, zstd searches k over
# [50, 2000] and d over {6, 8}, training once per pair: 170-260 ms on 2,000
# objects, inside the commit that crosses DICT_TRAIN_AFTER. Fixed at what that
# search chose on this project's objects (k 1,511-1,998, d 8): 45-60 ms, and
# held-out objects compress 5.24x against the search's 5.27x
# (docs/benchmarks.md, "Fifth session").
TRAIN_K = 2000
TRAIN_D = 8


class Codec:
    """Compresses with the newest dictionary, decompresses with whichever a frame names.

    Safe to share between threads: zstd contexts are kept per thread.
    """

    def __init__(self, dictionaries: Mapping[int, bytes] = (), current: int | None = None,
                 reload: Callable[[], Mapping[int, bytes]] | None = None) -> None:
        # ``reload`` fetches the store's dictionaries again: another process
        # may have trained one since this codec was made.
        self._reload = reload
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        for dict_id, data in dict(dictionaries).items():
            self._dicts[dict_id] = zstandard.ZstdCompressionDict(data)
        self.current = current
        self._local = threading.local()

    def add_dictionary(self, dict_id: int, data: bytes, make_current: bool = True) -> None:
        self._dicts[dict_id] = zstandard.ZstdCompressionDict(data)
        if make_current:
            self.current = dict_id
        self._local = threading.local()

    @property
    def dictionary_ids(self) -> list[int]:
        return sorted(self._dicts)

    def _compressor(self) -> zstandard.ZstdCompressor:
        key = self.current
        cache = self._local.__dict__.setdefault("compressors", {})
        comp = cache.get(key)
        if comp is None:
            if key is None:
                comp = zstandard.ZstdCompressor(level=LEVEL)
            else:
                comp = zstandard.ZstdCompressor(dict_data=_for_compression(self._dicts[key]))
            cache[key] = comp
        return comp

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        cache = self._local.__dict__.setdefault("decompressors", {})
        dec = cache.get(dict_id)
        if dec is None:
            if dict_id == 0:
                dec = zstandard.ZstdDecompressor()
            else:
                dec = zstandard.ZstdDecompressor(dict_data=self._dicts[dict_id])
            cache[dict_id] = dec
        return dec

    def compress(self, body: bytes) -> bytes:
        frame = self._compressor().compress(body)
        return frame + zlib.crc32(frame).to_bytes(4, "little")

    def decompress(self, data: bytes, object_id: str = "?", size: int | None = None) -> bytes:
        """The body a stored object's bytes hold; :class:`CorruptObject` naming ``object_id`` if damaged.

        ``size`` is the body length the store records for the object. The
        output is allocated before zstd writes into it, as large as the frame
        says (or ``max_output_size``), and a frame of a few KB can say 10 GB
        (a run of zeros compresses 30,000:1): a frame that does not hold
        exactly ``size`` bytes is refused before anything is allocated, so a
        tampered row or a hostile S3 body costs at most what the store says
        the object is. Every frame snapstore writes records its content size;
        one that does not is decoded into at most ``size`` bytes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            # A damaged store can hold text or a number where the bytes belong.
            raise CorruptObject(object_id, f"stored data is {type(data).__name__}, not bytes")
        if len(data) < 5:
            raise CorruptObject(object_id, f"stored data is only {len(data)} bytes long")
        data, check = data[:-4], data[-4:]
        if zlib.crc32(data).to_bytes(4, "little") != check:
            raise CorruptObject(object_id, "stored bytes fail their CRC-32 check")
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise CorruptObject(object_id, f"not a zstd frame: {exc}") from None
        dict_id, declared = params.dict_id, params.content_size
        if size is not None:
            if type(size) is not int or size < 0:
                raise CorruptObject(object_id, f"its recorded size is {size!r:.40}, not a byte count")
            if declared != zstandard.CONTENTSIZE_UNKNOWN and declared != size:
                raise CorruptObject(object_id, f"its zstd frame holds {declared} bytes, its recorded size is {size}")
        if dict_id and dict_id not in self._dicts and self._reload is not None:
            for known_id, dictionary in self._reload().items():
                if known_id not in self._dicts:
                    self._dicts[known_id] = zstandard.ZstdCompressionDict(dictionary)
        if dict_id and dict_id not in self._dicts:
            raise CorruptObject(object_id, f"compressed with unknown dictionary {dict_id}")
        try:
            # max_output_size only matters to a frame without a content size (0: refused).
            return self._decompressor(dict_id).decompress(data, max_output_size=size or 0)
        except zstandard.ZstdError as exc:
            raise CorruptObject(object_id, f"cannot decompress: {exc}") from None


def _for_compression(dictionary: zstandard.ZstdCompressionDict) -> zstandard.ZstdCompressionDict:
    """A copy of ``dictionary`` with its compression tables made for small objects (see DICT_HASH_LOG)."""
    data = dictionary.as_bytes()
    prepared = zstandard.ZstdCompressionDict(data)
    prepared.precompute_compress(compression_params=zstandard.ZstdCompressionParameters.from_level(
        LEVEL, source_size=4096, dict_size=len(data), hash_log=DICT_HASH_LOG, chain_log=DICT_CHAIN_LOG,
    ))
    return prepared


def train_dictionary(samples: Iterable[bytes]) -> tuple[int, bytes] | None:
    """Train a dictionary on object bodies; None if there are too few to be worth it."""
    sample_list = [s for s in samples if s]
    if len(sample_list) < MIN_TRAINING_SAMPLES:
        return None
    try:
        trained = zstandard.train_dictionary(DICTIONARY_SIZE, sample_list, level=LEVEL, k=TRAIN_K, d=TRAIN_D)
    except zstandard.ZstdError:
        return None
    return trained.dict_id(), trained.as_bytes()
