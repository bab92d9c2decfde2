"""Per-record compression: which codec a writer picks, and decoding any codec a reader meets.

The codec travels in each record (docs/format.md §3), so readers accept every codec whatever the
writer's settings. Compressor objects are per thread: zstd contexts are not thread-safe, and
compressing in the appending thread (outside the log's lock) lets concurrent writers compress in
parallel (zstd and lz4 release the GIL).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import lz4.block
import zstandard

from wfstate.errors import ValidationError
from wfstate.format import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD

CodecName = Literal["none", "lz4", "zstd"]
_CODEC_IDS: dict[str, int] = {"none": CODEC_NONE, "lz4": CODEC_LZ4, "zstd": CODEC_ZSTD}


@dataclass(frozen=True, slots=True, kw_only=True)
class Compression:
    """How a writer compresses record payloads.

    ``codec``: ``"zstd"`` (dense, the default), ``"lz4"`` (fastest) or ``"none"``.
    ``level``: zstd level 1–22 (default 3); for lz4, 0 is its fast mode and 1–16 its
    high-compression levels. ``threshold``: payloads shorter than this many bytes are stored
    uncompressed. A payload that does not shrink is stored uncompressed whatever the settings.
    """

    codec: CodecName = "zstd"
    level: int = 3
    threshold: int = 256

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


class _PerThread(threading.local):
    zstd_c: dict[int, zstandard.ZstdCompressor]
    zstd_d: zstandard.ZstdDecompressor | None

    def __init__(self) -> None:
        self.zstd_c = {}
        self.zstd_d = None


_local = _PerThread()


def compress(payload: bytes, settings: Compression) -> tuple[int, bytes]:
    """``(codec id, stored bytes)`` for ``payload`` under ``settings``."""
    if settings.codec == "none" or len(payload) < settings.threshold:
        return CODEC_NONE, payload
    if settings.codec == "zstd":
        compressor = _local.zstd_c.get(settings.level)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=settings.level, write_checksum=False)
            _local.zstd_c[settings.level] = compressor
        body: bytes = compressor.compress(payload)
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


def decompress(codec: int, body: bytes | memoryview, raw_length: int) -> bytes:
    """The payload stored as ``body`` with ``codec``; ``ValueError`` if it does not decode to
    exactly ``raw_length`` bytes."""
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
    else:
        raise ValueError(f"unknown codec {codec}")
    if len(out) != raw_length:
        raise ValueError(f"payload decodes to {len(out)} bytes, header says {raw_length}")
    return out
