"""One segment file: its header, the record validity rule, and torn-tail versus corruption.

This module is ``docs/format.md`` §2–§4 in code. It works on the bytes of a segment already read
into memory, so the same rules serve the writer's recovery at open, the reader, and ``verify``;
its only I/O is :func:`read_head`, reading a header (dictionary block included) through the
file system seam.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from wfstate.errors import CorruptionError, FormatVersionError
from wfstate.format import (
    CODEC_NONE,
    CODECS,
    DICTIONARY_BLOCK,
    DICTIONARY_BLOCK_SIZE,
    DICTIONARY_CODECS,
    FLAG_AFTER_SYNC,
    FORMAT_VERSION,
    KNOWN_FLAGS,
    MAX_DICTIONARY,
    MAX_PAYLOAD,
    MAX_SEGMENT_HEADER_SIZE,
    READABLE_VERSIONS,
    RECORD_ALIGN,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HAS_DICTIONARY,
    SEGMENT_HEADER,
    SEGMENT_HEADER_CHECKED,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    ZERO_RECORD_HEADER,
    RecordHeader,
    SegmentHeader,
    pad8,
    unpack_record_header,
    xxh3,
)
from wfstate.fs import FileSystem


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """A segment file found in the log directory, identified by its name."""

    name: str
    path: str
    seq: int
    first_lsn: int


def header_is_torn_creation(buf: bytes, first_lsn: int) -> bool:
    """Whether a last segment with an invalid header can be a crash during its creation.

    A segment's header, dictionary block included, and its directory entry are made durable
    before any record is written to it (docs/format.md §2.1), so such a file holds no record
    (§4): when its 64 header bytes are intact, nothing but zeros after ``header_size`` (the
    dictionary block is what was torn); when they are not, at most 64 bytes or zeros after
    them, or, no longer than the largest header, no plausible record header (LSN from the file
    name's ``first_lsn`` on) that fits in the file at any 8-byte-aligned offset from 64.
    """
    if len(buf) <= SEGMENT_HEADER_SIZE or not any(buf[SEGMENT_HEADER_SIZE:]):
        return True
    if buf[:8] == SEGMENT_MAGIC and SEGMENT_HEADER.unpack_from(buf, 0)[-1] == xxh3(
        buf[:SEGMENT_HEADER_CHECKED]
    ):
        header_size = SEGMENT_HEADER.unpack_from(buf, 0)[2]
        return not any(buf[header_size:])
    if len(buf) > MAX_SEGMENT_HEADER_SIZE:
        return False
    for p in range(SEGMENT_HEADER_SIZE, len(buf) - RECORD_HEADER_SIZE + 1, RECORD_ALIGN):
        h = unpack_record_header(buf, p)
        plausible = h.lsn >= first_lsn and h.is_plausible(None, DICTIONARY_CODECS)
        if plausible and p + h.size <= len(buf):
            return False
    return True


def read_head(fs: FileSystem, seg: SegmentFile) -> bytes:
    """The header bytes of ``seg`` for :func:`read_segment_header`: its first 64 bytes, and
    its dictionary block when those declare one (``FileNotFoundError`` passes through)."""
    head = fs.read_range(seg.path, 0, SEGMENT_HEADER_SIZE)
    size = declared_header_size(head)
    if size > SEGMENT_HEADER_SIZE:
        head = fs.read_range(seg.path, 0, size)
    return head


def declared_header_size(head: bytes) -> int:
    """The ``header_size`` the first 64 bytes ``head`` of a segment declare, trusted only to
    know how many bytes to read (at most the largest header); 64 when it says less."""
    if len(head) < SEGMENT_HEADER_SIZE:
        return SEGMENT_HEADER_SIZE
    size: int = SEGMENT_HEADER.unpack_from(head, 0)[2]
    return min(max(size, SEGMENT_HEADER_SIZE), MAX_SEGMENT_HEADER_SIZE)


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
    dictionary_flag = version >= 3 and flags == SEGMENT_HAS_DICTIONARY
    if (
        version not in READABLE_VERSIONS
        or (flags and not dictionary_flag)
        or reserved
        or (not dictionary_flag and header_size != SEGMENT_HEADER_SIZE)
    ):
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
    dictionary = _read_dictionary(buf, seg, header_size, check) if dictionary_flag else None
    return SegmentHeader(hdr_epoch, seq, first_lsn, prev, dictionary)


def _read_dictionary(buf: bytes, seg: SegmentFile, header_size: int, check: int) -> bytes:
    """The dictionary of a ``HAS_DICTIONARY`` header, by the rules of docs/format.md §2.1.1."""
    if len(buf) < SEGMENT_HEADER_SIZE + DICTIONARY_BLOCK_SIZE:
        raise CorruptionError(seg.path, SEGMENT_HEADER_SIZE, "dictionary block is short")
    length, reserved, dict_check = DICTIONARY_BLOCK.unpack_from(buf, SEGMENT_HEADER_SIZE)
    start = SEGMENT_HEADER_SIZE + DICTIONARY_BLOCK_SIZE
    if not 1 <= length <= MAX_DICTIONARY or reserved or header_size != start + pad8(length):
        raise CorruptionError(seg.path, SEGMENT_HEADER_SIZE, "dictionary block out of range")
    if len(buf) < header_size:
        raise CorruptionError(
            seg.path, len(buf), f"dictionary block is short ({len(buf)} of {header_size} bytes)"
        )
    dictionary = bytes(buf[start : start + length])
    if xxh3(dictionary, check) != dict_check:
        raise CorruptionError(seg.path, start, "dictionary checksum mismatch")
    if any(buf[start + length : header_size]):
        raise CorruptionError(seg.path, start + length, "non-zero dictionary padding")
    return dictionary


class Cursor:
    """A position in a segment with the chain state needed to verify the record there, and
    the record codecs valid in that segment (:attr:`SegmentHeader.codecs`)."""

    __slots__ = ("codecs", "lsn", "offset", "reason", "seed")

    def __init__(self, offset: int, seed: int, lsn: int, codecs: frozenset[int] = CODECS) -> None:
        self.offset = offset
        self.seed = seed
        self.lsn = lsn
        self.codecs = codecs
        self.reason: str | None = None  # why walking stopped; None: clean end of segment


def _implausible(h: RecordHeader, expected_lsn: int | None, codecs: frozenset[int]) -> str:
    if expected_lsn is not None and h.lsn != expected_lsn:
        return f"record LSN {h.lsn} where {expected_lsn} was expected"
    if h.type == 0:
        return "record type 0"
    if h.codec not in codecs:
        if h.codec in DICTIONARY_CODECS:
            return f"codec {h.codec} in a segment without a dictionary"
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
    codecs = cur.codecs
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
            and codec in codecs
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
                cur.reason = _implausible(make(fields), lsn, codecs)
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


def resync(
    buf: bytes, damaged: int, expected_lsn: int, codecs: frozenset[int] = CODECS
) -> Cursor | None:
    """The first position after the invalid record at ``damaged`` where the chain verifies again.

    Returns a cursor at a record that verifies (its seed taken from a predecessor's stored
    checksum), or None. Tried in the order of docs/format.md §4: (a) after the damaged record
    itself if its header is plausible; (b) at each 8-byte-aligned offset, a plausible header
    followed by a record that verifies when seeded with that header's stored checksum.
    """
    end = len(buf)
    if end - damaged >= RECORD_HEADER_SIZE:
        h = unpack_record_header(buf, damaged)
        if h.is_plausible(expected_lsn, codecs) and damaged + h.size < end:
            cur = Cursor(damaged + h.size, h.checksum, h.lsn + 1, codecs)
            if _verifies(buf, cur):
                return cur
    q = damaged + RECORD_ALIGN
    while q + 2 * RECORD_HEADER_SIZE <= end:
        h = unpack_record_header(buf, q)
        if h.lsn > expected_lsn and h.is_plausible(None, codecs) and q + h.size < end:
            cur = Cursor(q + h.size, h.checksum, h.lsn + 1, codecs)
            if _verifies(buf, cur):
                return cur
        q += RECORD_ALIGN
    return None


def _verifies(buf: bytes, cur: Cursor) -> bool:
    probe = Cursor(cur.offset, cur.seed, cur.lsn, cur.codecs)
    return next(walk(buf, probe), None) is not None


def durable_after(
    buf: bytes, damaged: int, expected_lsn: int, codecs: frozenset[int] = CODECS
) -> int | None:
    """Offset of a chain-verified ``AFTER_SYNC`` record after ``damaged``, or None.

    Such a record proves the bytes at ``damaged`` were durable before they went bad, so the
    damage is corruption, not a torn write (docs/format.md §4).
    """
    p, lsn = damaged, expected_lsn
    while (cur := resync(buf, p, lsn, codecs)) is not None:
        for offset, h in walk(buf, cur):
            if h.flags & FLAG_AFTER_SYNC:
                return offset
        if cur.reason is None:
            return None
        p, lsn = cur.offset, cur.lsn
    return None
