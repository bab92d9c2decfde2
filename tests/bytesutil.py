"""Byte-level helpers for damaging log files on purpose, and for looking at them independently.

The damage helpers change one file in place. The parsing helpers re-implement just enough of
``docs/format.md`` (§2.1, §3) to locate records in a segment the writer produced, without going
through ``wfstate``'s own reader, so tests can aim damage at a given field of a given record.
"""

from __future__ import annotations

import os
import re
import struct
from typing import NamedTuple

import xxhash

SEGMENT_NAME = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{16}\.wal$")
HEADER_SIZE = 64
RECORD_HEADER_SIZE = 32
_RECORD_HEADER = struct.Struct("<QQIIBBBBI")


def flip_bit(path: str | os.PathLike[str], bit_index: int) -> None:
    """Invert bit ``bit_index % 8`` of byte ``bit_index // 8`` of the file at ``path``."""
    fd = os.open(path, os.O_RDWR)
    try:
        (byte,) = os.pread(fd, 1, bit_index // 8)
        os.pwrite(fd, bytes([byte ^ (1 << (bit_index % 8))]), bit_index // 8)
    finally:
        os.close(fd)


def flipped(data: bytes, bit_index: int) -> bytes:
    """``data`` with one bit inverted (the in-memory twin of :func:`flip_bit`)."""
    buf = bytearray(data)
    buf[bit_index // 8] ^= 1 << (bit_index % 8)
    return bytes(buf)


def truncate_at(path: str | os.PathLike[str], size: int) -> None:
    """Cut the file at ``path`` to ``size`` bytes (which must not be more than its size)."""
    if size > os.path.getsize(path):
        raise ValueError(f"{path} is shorter than {size} bytes")
    os.truncate(path, size)


def overwrite(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    """Write ``data`` over the bytes of ``path`` at ``offset`` (extending the file if needed)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def segment_paths(wal_dir: str | os.PathLike[str]) -> list[str]:
    """Paths of the segment files in ``wal_dir`` (names ``<seq>-<first_lsn>.wal``), in order."""
    names = sorted(n for n in os.listdir(wal_dir) if SEGMENT_NAME.match(n))
    return [os.path.join(wal_dir, n) for n in names]


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def snapshot(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> content), to compare a tree before/after."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = read_bytes(full)
    return out


def snapshot_without_locks(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """:func:`snapshot` without the ``LOCK`` files, whose durability hint every close of a
    store rewrites: what a store holds, to check that a close wrote nothing else."""
    return {path: data for path, data in snapshot(root).items() if os.path.basename(path) != "LOCK"}


class Span(NamedTuple):
    """Where one record of a segment lies, and its header fields."""

    offset: int
    size: int
    checksum: int
    lsn: int
    length: int
    raw_length: int
    type: int
    codec: int
    flags: int


def pad8(n: int) -> int:
    return (n + 7) & ~7


def record_spans(data: bytes) -> list[Span]:
    """The records of a segment written by the writer, in order (no validation beyond sizes)."""
    spans: list[Span] = []
    p = HEADER_SIZE
    while p + RECORD_HEADER_SIZE <= len(data):
        checksum, lsn, length, raw_length, rtype, codec, flags, _r1, _r2 = (
            _RECORD_HEADER.unpack_from(data, p)
        )
        if lsn == 0:
            break
        size = RECORD_HEADER_SIZE + pad8(length)
        spans.append(Span(p, size, checksum, lsn, length, raw_length, rtype, codec, flags))
        p += size
    return spans


def header_field(data: bytes, offset: int, fmt: str) -> int:
    """One little-endian integer field (``struct`` format ``fmt``) of ``data`` at ``offset``."""
    (value,) = struct.unpack_from("<" + fmt, data, offset)
    assert isinstance(value, int)
    return value


def xxh3(data: bytes, seed: int = 0) -> int:
    """XXH3-64, the format's checksum (docs/format.md: ``xxhash.xxh3_64_intdigest``)."""
    return xxhash.xxh3_64_intdigest(data, seed)


def genesis(epoch: int) -> int:
    """The chain seed of a store's first segment (docs/format.md §2.1)."""
    return xxh3(struct.pack("<Q", epoch))


def segment_header(
    *, epoch: int, seq: int, first_lsn: int, prev_checksum: int, version: int = 1
) -> bytes:
    """The 64 bytes of a segment header, framed from the spec's table (§2.1)."""
    body = struct.pack(
        "<8sHHIQQQQQ", b"WFSTWAL\x00", version, 64, 0, epoch, seq, first_lsn, prev_checksum, 0
    )
    return body + struct.pack("<Q", xxh3(body))


def reseal_header(data: bytes) -> bytes:
    """``data`` with its segment header checksum (bytes 56..63) recomputed over bytes 0..55."""
    return data[:56] + struct.pack("<Q", xxh3(data[:56])) + data[64:]


def frame(
    *,
    seed: int,
    lsn: int,
    body: bytes,
    raw_length: int,
    codec: int = 0,
    type: int = 1,
    flags: int = 1,
    padding_byte: int = 0,
) -> tuple[bytes, int]:
    """One record framed from the spec's table (§3): its bytes and its checksum.

    ``padding_byte`` other than 0 frames a record that breaks rule 5 of §3.1 while its checksum
    (which covers the padding) still matches.
    """
    rest = struct.pack("<QIIBBBBI", lsn, len(body), raw_length, type, codec, flags, 0, 0)
    rest += body + bytes([padding_byte]) * (pad8(len(body)) - len(body))
    checksum = xxh3(rest, seed)
    return struct.pack("<Q", checksum) + rest, checksum
