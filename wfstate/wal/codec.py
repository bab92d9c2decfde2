"""Per-record compression: which codec a writer picks, and decoding any codec a reader meets.

The codec travels in each record (docs/format.md §3), so readers accept every codec whatever the
writer's settings. Compressor objects are per thread: zstd contexts are not thread-safe, and
compressing in the appending thread (outside the log's lock) lets concurrent writers compress in
parallel (zstd and lz4 release the GIL).

Codec 3 compresses with a segment's zstd dictionary (§2.1.1). A :class:`Dictionary` names its
bytes by their content (``key``), so the per-thread compressors and decompressors built for it
(a few per thread, bounded) serve every segment carrying the same dictionary, not one record.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final, Literal

import lz4.block
import zstandard

from wfstate.errors import ValidationError
from wfstate.format import (
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_DICT,
    MAX_DICTIONARY,
    xxh3,
)

CodecName = Literal["none", "lz4", "zstd"]
_CODEC_IDS: dict[str, int] = {"none": CODEC_NONE, "lz4": CODEC_LZ4, "zstd": CODEC_ZSTD}


@dataclass(frozen=True, slots=True, kw_only=True)
class Compression:
    """How a writer compresses record payloads.

    ``codec``: ``"zstd"`` (dense, the default), ``"lz4"`` (fastest) or ``"none"``.
    ``level``: zstd level 1–22 (default 3); for lz4, 0 is its fast mode and 1–16 its
    high-compression levels. ``threshold``: payloads shorter than this many bytes are stored
    uncompressed. A payload that does not shrink is stored uncompressed whatever the settings.
    ``dictionary``: with zstd, train a dictionary on this log's own payloads and give it to
    the segments written from then on (docs/format.md §2.3: about twice the space saved on
    ~1 KB records); False never writes one (nor codec 3). Ignored by lz4 and ``"none"``.
    """

    codec: CodecName = "zstd"
    level: int = 3
    threshold: int = 256
    dictionary: bool = True

    def __post_init__(self) -> None:
        if self.codec not in _CODEC_IDS:
            raise ValidationError(
                "compression.codec", f"must be one of {sorted(_CODEC_IDS)}, not {self.codec!r}"
            )
        if not isinstance(self.level, int) or isinstance(self.level, bool):
            raise ValidationError("compression.level", f"must be an int, not {self.level!r}")
        bounds = {"zstd": (1, 22), "lz4": (0, 16), "none": (0, 22)}[self.codec]
        if not bounds[0] <= self.level <= bounds[1]:
            raise ValidationError(
                "compression.level",
                f"{self.codec} level must be in {bounds[0]}..{bounds[1]}, not {self.level}",
            )
        if not isinstance(self.threshold, int) or self.threshold < 0:
            raise ValidationError(
                "compression.threshold", f"must be an int >= 0, not {self.threshold!r}"
            )
        if not isinstance(self.dictionary, bool):
            raise ValidationError(
                "compression.dictionary", f"must be a bool, not {self.dictionary!r}"
            )

    @property
    def uses_dictionary(self) -> bool:
        """Whether a writer under these settings trains and writes dictionaries."""
        return self.codec == "zstd" and self.dictionary


@dataclass(frozen=True, slots=True, eq=False)
class Dictionary:
    """A segment's zstd dictionary (docs/format.md §2.1.1): its bytes and ``key``, the
    unseeded xxh3 of them, which names it in the per-thread caches (the stored
    ``dict_checksum`` differs per segment; the content does not)."""

    data: bytes
    key: int

    @classmethod
    def of(cls, data: bytes | None) -> Dictionary | None:
        """The dictionary with bytes ``data``; None for None."""
        return None if data is None else cls(data, xxh3(data))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dictionary) and other.key == self.key and other.data == self.data

    def __hash__(self) -> int:
        return self.key


#: Dictionaries a thread keeps compressors/decompressors for; more (rare: many stores in one
#: process) empties its cache and starts again.
_MAX_CACHED_DICTIONARIES = 8


class _PerThread(threading.local):
    zstd_c: dict[int, zstandard.ZstdCompressor]
    zstd_d: zstandard.ZstdDecompressor | None
    dict_c: dict[tuple[int, int], zstandard.ZstdCompressor]
    dict_d: dict[int, zstandard.ZstdDecompressor]

    def __init__(self) -> None:
        self.zstd_c = {}
        self.zstd_d = None
        self.dict_c = {}
        self.dict_d = {}


_local = _PerThread()


def _dictionary_compressor(level: int, dictionary: Dictionary) -> zstandard.ZstdCompressor:
    cache = _local.dict_c
    compressor = cache.get((level, dictionary.key))
    if compressor is None:
        if len(cache) >= _MAX_CACHED_DICTIONARIES:
            cache.clear()
        data = zstandard.ZstdCompressionDict(dictionary.data)
        compressor = zstandard.ZstdCompressor(level=level, dict_data=data, write_checksum=False)
        cache[(level, dictionary.key)] = compressor
    return compressor


def _dictionary_decompressor(dictionary: Dictionary) -> zstandard.ZstdDecompressor:
    cache = _local.dict_d
    decompressor = cache.get(dictionary.key)
    if decompressor is None:
        if len(cache) >= _MAX_CACHED_DICTIONARIES:
            cache.clear()
        data = zstandard.ZstdCompressionDict(dictionary.data)
        decompressor = zstandard.ZstdDecompressor(dict_data=data)
        cache[dictionary.key] = decompressor
    return decompressor


#: Payloads longer than this are compressed without the segment's dictionary (codec 2) and are
#: not sampled to train one: a dictionary pays on small records, which share little with
#: themselves, while a large one compresses well alone, and a dictionary trained on large
#: records (a workflow's creation with its steps) made the ~1 KB step outputs after them
#: compress worse than alone (28 % saved against JSON instead of 42 %, measured).
DICTIONARY_MAX_PAYLOAD: Final = 4096


def compress(
    payload: bytes, settings: Compression, dictionary: Dictionary | None = None
) -> tuple[int, bytes]:
    """``(codec id, stored bytes)`` for ``payload`` under ``settings``; with zstd and a
    ``dictionary`` (the one of the segment the record goes to), codec 3 with it for a payload
    of at most :data:`DICTIONARY_MAX_PAYLOAD` bytes."""
    if settings.codec == "none" or len(payload) < settings.threshold:
        return CODEC_NONE, payload
    if settings.codec == "zstd":
        if dictionary is not None and len(payload) <= DICTIONARY_MAX_PAYLOAD:
            body: bytes = _dictionary_compressor(settings.level, dictionary).compress(payload)
            codec = CODEC_ZSTD_DICT
        else:
            compressor = _local.zstd_c.get(settings.level)
            if compressor is None:
                compressor = zstandard.ZstdCompressor(level=settings.level, write_checksum=False)
                _local.zstd_c[settings.level] = compressor
            body = compressor.compress(payload)
            codec = CODEC_ZSTD
    else:
        if settings.level == 0:
            body = lz4.block.compress(payload, store_size=False)
        else:
            body = lz4.block.compress(
                payload, mode="high_compression", compression=settings.level, store_size=False
            )
        codec = CODEC_LZ4
    if len(body) >= len(payload):
        return CODEC_NONE, payload
    return codec, body


def decompress(
    codec: int, body: bytes | memoryview, raw_length: int, dictionary: Dictionary | None = None
) -> bytes:
    """The payload stored as ``body`` with ``codec`` (3: with ``dictionary``, its segment's);
    ``ValueError`` if it does not decode to exactly ``raw_length`` bytes, or is codec 3
    without a dictionary."""
    if codec == CODEC_NONE:
        out = bytes(body)
    elif codec == CODEC_LZ4:
        try:
            out = lz4.block.decompress(body, uncompressed_size=raw_length)
        except lz4.block.LZ4BlockError as exc:
            raise ValueError(f"lz4 payload does not decode: {exc}") from exc
    elif codec == CODEC_ZSTD:
        decompressor = _local.zstd_d
        if decompressor is None:
            decompressor = _local.zstd_d = zstandard.ZstdDecompressor()
        try:
            out = decompressor.decompress(body, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise ValueError(f"zstd payload does not decode: {exc}") from exc
    elif codec == CODEC_ZSTD_DICT:
        if dictionary is None:
            raise ValueError("codec 3 record in a segment without a dictionary")
        try:
            out = _dictionary_decompressor(dictionary).decompress(body, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise ValueError(f"zstd payload does not decode with its dictionary: {exc}") from exc
    else:
        raise ValueError(f"unknown codec {codec}")
    if len(out) != raw_length:
        raise ValueError(f"payload decodes to {len(out)} bytes, header says {raw_length}")
    return out


def train_dictionary(samples: list[bytes | bytearray | memoryview], size: int) -> Dictionary | None:
    """A zstd dictionary of at most ``size`` bytes trained on ``samples``; None when zstd
    cannot train one from them (too few or too alike samples), or when ``size`` is not in
    ``1..MAX_DICTIONARY`` (no segment header could hold it: the writer goes on without)."""
    if not 1 <= size <= MAX_DICTIONARY:
        return None
    try:
        trained = zstandard.train_dictionary(size, samples)
    except zstandard.ZstdError:
        return None
    data = trained.as_bytes()
    return Dictionary.of(data) if data else None
