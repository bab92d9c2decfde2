"""One segment file: its header, the record validity rule, and torn-tail versus corruption.

This module is ``docs/format.md`` §2–§4 in code. It works on the bytes of a segment already read
into memory and never does I/O, so the same rules serve the writer's recovery at open, the
reader, and ``verify``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from wfstate.errors import CorruptionError, FormatVersionError
from wfstate.format import (
    CODEC_NONE,
    CODECS,
    FLAG_AFTER_SYNC,
    FORMAT_VERSION,
    KNOWN_FLAGS,
    MAX_PAYLOAD,
    READABLE_VERSIONS,
    RECORD_ALIGN,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER,
    SEGMENT_HEADER_CHECKED,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    ZERO_RECORD_HEADER,
    RecordHeader,
    SegmentHeader,
    unpack_record_header,
    xxh3,
)


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """A segment file found in the log directory, identified by its name."""

    name: str
    path: str
    seq: int
    first_lsn: int


def header_is_torn_creation(buf: bytes) -> bool:
    """Whether a last segment with an invalid header can be a crash during its creation.

    A segment's header and directory entry are made durable before any record is written to it
    (docs/format.md §2.1), so such a file holds at most the header's 64 bytes, or zeros after.
    """
    return len(buf) <= SEGMENT_HEADER_SIZE or not any(buf[SEGMENT_HEADER_SIZE:])


def read_segment_header(buf: bytes, seg: SegmentFile, epoch: int | None) -> SegmentHeader:
    """Decode and check the header of ``seg``; ``CorruptionError`` naming the broken rule.

    ``epoch``: the store's epoch when known (the header must carry it), else None.
    """
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise CorruptionError(seg.path, 0, f"segment header is short ({len(buf)} of 64 bytes)")
    (magic, version, header_size, flags, hdr_epoch, seq, first_lsn, prev, reserved, check) = (
        SEGMENT_HEADER.unpack_from(buf, 0)
    )
    if magic != SEGMENT_MAGIC:
        raise CorruptionError(seg.path, 0, f"bad segment magic {magic!r}")
    if check != xxh3(buf[:SEGMENT_HEADER_CHECKED]):
        raise CorruptionError(seg.path, 56, "segment header checksum mismatch")
    if version > FORMAT_VERSION:
        raise FormatVersionError(seg.path, version, FORMAT_VERSION)
    if version not in READABLE_VERSIONS or header_size != SEGMENT_HEADER_SIZE or flags or reserved:
        raise CorruptionError(seg.path, 8, "segment header fields out of range")
    if hdr_epoch == 0 or (epoch is not None and hdr_epoch != epoch):
        raise CorruptionError(
            seg.path, 16, f"segment belongs to store epoch {hdr_epoch:#x}, not {epoch or 0:#x}"
        )
    if seq < 1 or first_lsn < 1:
        raise CorruptionError(seg.path, 24, f"seq {seq} / first LSN {first_lsn} must be >= 1")
    if seq != seg.seq or first_lsn != seg.first_lsn:
        raise CorruptionError(
            seg.path, 24, f"header says seq {seq} first LSN {first_lsn}, the file name does not"
        )
    return SegmentHeader(hdr_epoch, seq, first_lsn, prev)


class Cursor:
    """A position in a segment with the chain state needed to verify the record there."""

    __slots__ = ("lsn", "offset", "reason", "seed")

    def __init__(self, offset: int, seed: int, lsn: int) -> None:
        self.offset = offset
        self.seed = seed
        self.lsn = lsn
        self.reason: str | None = None  # why walking stopped; None: clean end of segment


def _implausible(h: RecordHeader, expected_lsn: int | None) -> str:
    if expected_lsn is not None and h.lsn != expected_lsn:
        return f"record LSN {h.lsn} where {expected_lsn} was expected"
    if h.type == 0:
        return "record type 0"
    if h.codec not in CODECS:
        return f"unknown codec {h.codec}"
    if h.flags & ~KNOWN_FLAGS:
        return f"unknown flags {h.flags:#x}"
    if h.reserved1 or h.reserved2:
        return "reserved header bytes are not zero"
    if not (1 <= h.length <= MAX_PAYLOAD and 1 <= h.raw_length <= MAX_PAYLOAD):
        return f"record length {h.length} / raw length {h.raw_length} out of range"
    return "uncompressed record whose raw length differs from its length"


def walk(buf: bytes, cur: Cursor) -> Iterator[tuple[int, RecordHeader]]:
    """Yield ``(offset, header)`` of each valid record from ``cur`` on (docs/format.md §3.1).

    ``cur`` advances past every yielded record; when the generator ends, ``cur.offset`` is where
    valid data stops and ``cur.reason`` says why (None at a clean end of the segment).

    Every record of a log goes through here at each open, so the common case (a plausible
    header, as :meth:`RecordHeader.is_plausible` with the expected LSN) is tested inline on the
    unpacked fields; anything else is judged by :func:`_implausible`.
    """
    end = len(buf)
    view = memoryview(buf)
    unpack = RECORD_HEADER.unpack_from
    make = RecordHeader._make
    digest = xxhash.xxh3_64_intdigest
    p = cur.offset
    seed = cur.seed
    lsn = cur.lsn
    while True:
        if p == end:
            cur.reason = None
            return
        if end - p < RECORD_HEADER_SIZE:
            cur.reason = f"short record header ({end - p} bytes before end of file)"
            return
        fields = unpack(buf, p)
        checksum, h_lsn, length, raw_length, rtype, codec, flags, reserved1, reserved2 = fields
        if not (
            h_lsn == lsn
            and rtype != 0
            and codec in CODECS
            and not (flags & ~KNOWN_FLAGS)
            and reserved1 == 0
            and reserved2 == 0
            and 1 <= length <= MAX_PAYLOAD
            and 1 <= raw_length <= MAX_PAYLOAD
            and (codec != CODEC_NONE or raw_length == length)
        ):
            if buf[p : p + RECORD_HEADER_SIZE] == ZERO_RECORD_HEADER:
                cur.reason = "zero-filled record header"
            else:
                cur.reason = _implausible(make(fields), lsn)
            return
        stored = RECORD_HEADER_SIZE + length
        size = (stored + 7) & ~7
        if p + size > end:
            cur.reason = f"record of {size} bytes extends {p + size - end} bytes past end of file"
            return
        if digest(view[p + 8 : p + size], seed) != checksum:
            cur.reason = f"checksum mismatch in record LSN {h_lsn}"
            return
        if stored != size and any(view[p + stored : p + size]):
            cur.reason = "non-zero record padding"
            return
        offset = p
        p = cur.offset = p + size
        seed = cur.seed = checksum
        lsn = cur.lsn = h_lsn + 1
        yield offset, make(fields)


def resync(buf: bytes, damaged: int, expected_lsn: int) -> Cursor | None:
    """The first position after the invalid record at ``damaged`` where the chain verifies again.

    Returns a cursor at a record that verifies (its seed taken from a predecessor's stored
    checksum), or None. Tried in the order of docs/format.md §4: (a) after the damaged record
    itself if its header is plausible; (b) at each 8-byte-aligned offset, a plausible header
    followed by a record that verifies when seeded with that header's stored checksum.
    """
    end = len(buf)
    if end - damaged >= RECORD_HEADER_SIZE:
        h = unpack_record_header(buf, damaged)
        if h.is_plausible(expected_lsn) and damaged + h.size < end:
            cur = Cursor(damaged + h.size, h.checksum, h.lsn + 1)
            if _verifies(buf, cur):
                return cur
    q = damaged + RECORD_ALIGN
    while q + 2 * RECORD_HEADER_SIZE <= end:
        h = unpack_record_header(buf, q)
        if h.lsn > expected_lsn and h.is_plausible(None) and q + h.size < end:
            cur = Cursor(q + h.size, h.checksum, h.lsn + 1)
            if _verifies(buf, cur):
                return cur
        q += RECORD_ALIGN
    return None


def _verifies(buf: bytes, cur: Cursor) -> bool:
    probe = Cursor(cur.offset, cur.seed, cur.lsn)
    return next(walk(buf, probe), None) is not None


def durable_after(buf: bytes, damaged: int, expected_lsn: int) -> int | None:
    """Offset of a chain-verified ``AFTER_SYNC`` record after ``damaged``, or None.

    Such a record proves the bytes at ``damaged`` were durable before they went bad, so the
    damage is corruption, not a torn write (docs/format.md §4).
    """
    p, lsn = damaged, expected_lsn
    while (cur := resync(buf, p, lsn)) is not None:
        for offset, h in walk(buf, cur):
            if h.flags & FLAG_AFTER_SYNC:
                return offset
        if cur.reason is None:
            return None
        p, lsn = cur.offset, cur.lsn
    return None
