"""Where each record of the log is, so that one record can be read without a scan.

A :class:`RecordIndex` maps an LSN to its segment, offset, size and chain seed (the checksum
of the record before it), which is all :func:`read_record_at` needs to read the record back
*and verify it*: the stored checksum must match the bytes seeded with the predecessor's, so a
record read by position is as trustworthy as one read by a full scan. A handle fills its
index from what it reads at open, writes, and catches up on; 20 bytes per record. When the
log's beginning is discarded, :meth:`RecordIndex.drop_before` forgets the records before it.

A record stored with codec 3 needs its segment's dictionary (docs/format.md §2.1.1): it is read
from the segment's header, verified, the first time a record of that segment needs it, and
kept per segment (:attr:`RecordIndex.dictionaries`).
"""

from __future__ import annotations

import bisect
import os
from array import array

from wfstate.errors import CorruptionError, NotFoundError
from wfstate.format import (
    CODEC_ZSTD_DICT,
    RECORD_HEADER_SIZE,
    parse_segment_name,
    unpack_record_header,
    xxh3,
)
from wfstate.fs import FileSystem
from wfstate.wal.codec import Dictionary, decompress
from wfstate.wal.reader import Record
from wfstate.wal.segment import SegmentFile, read_head, read_segment_header


class _Span:
    """Indexed records of one segment: consecutive LSNs from ``first_lsn``."""

    __slots__ = ("first_lsn", "offsets", "path", "seeds", "sizes")

    def __init__(self, path: str, first_lsn: int) -> None:
        self.path = path
        self.first_lsn = first_lsn
        self.offsets = array("Q")
        self.sizes = array("I")
        self.seeds = array("Q")


class RecordIndex:
    """LSN → location of the records added. Appends come from one thread at a time;
    :meth:`drop_before` from a thread that excludes appends. :meth:`locate` may run in any
    thread at any time: the spans and their first LSNs are replaced together, as one tuple."""

    def __init__(self) -> None:
        self._table: tuple[list[_Span], list[int]] = ([], [])
        self._next = 0
        self.dictionaries: dict[str, Dictionary] = {}
        """Segment path → its dictionary, for :func:`read_record_at` (filled as needed)."""

    def add(self, segment: SegmentFile, lsn: int, offset: int, size: int, seed: int) -> None:
        """Record where ``lsn`` is. LSNs come in increasing order; one already known is
        ignored, and a gap (records a salvage recovery mode skipped) starts a new span."""
        spans, firsts = self._table
        if spans and lsn < self._next:
            return
        if not spans or lsn != self._next or spans[-1].path != segment.path:
            spans.append(_Span(segment.path, lsn))  # before firsts: see locate
            firsts.append(lsn)
        span = spans[-1]
        span.offsets.append(offset)
        span.sizes.append(size)
        span.seeds.append(seed)
        self._next = lsn + 1

    def drop_before(self, lsn: int) -> None:
        """Forget every record before ``lsn`` (they were discarded); later ones stay."""
        kept: list[_Span] = []
        for span in self._table[0]:
            if span.first_lsn + len(span.offsets) <= lsn:
                continue
            if span.first_lsn >= lsn:
                kept.append(span)
                continue
            cut = lsn - span.first_lsn
            trimmed = _Span(span.path, lsn)
            trimmed.offsets = span.offsets[cut:]
            trimmed.sizes = span.sizes[cut:]
            trimmed.seeds = span.seeds[cut:]
            kept.append(trimmed)
        self._table = (kept, [s.first_lsn for s in kept])
        paths = {s.path for s in kept}
        for path in [p for p in self.dictionaries if p not in paths]:
            self.dictionaries.pop(path, None)

    def locate(self, lsn: int) -> tuple[str, int, int, int] | None:
        """``(segment path, offset, size, seed)`` of ``lsn``, or None if it is not indexed."""
        spans, firsts = self._table
        i = bisect.bisect_right(firsts, lsn) - 1
        if i < 0 or lsn >= self._next:
            return None
        span = spans[i]
        k = lsn - span.first_lsn
        if k >= len(span.offsets):
            return None
        return span.path, span.offsets[k], span.sizes[k], span.seeds[k]


def read_record_at(
    fs: FileSystem,
    lsn: int,
    where: tuple[str, int, int, int],
    dictionaries: dict[str, Dictionary] | None = None,
) -> Record:
    """Read record ``lsn`` at ``where`` (from :meth:`RecordIndex.locate`) and verify it.

    ``dictionaries`` (:attr:`RecordIndex.dictionaries`) caches the dictionaries of segments
    read for codec-3 records.

    ``NotFoundError`` if its segment file no longer exists (another handle discarded it).
    ``CorruptionError`` if the bytes there are not that record: wrong LSN, short, or a
    checksum that does not verify with the predecessor's (the file changed since it was
    indexed, or the disk returned other bytes).
    """
    path, offset, size, seed = where
    try:
        buf = fs.read_range(path, offset, size)
    except FileNotFoundError:
        raise NotFoundError(
            f"lsn: record {lsn} is gone with its segment {path} (discarded by another handle)"
        ) from None
    if len(buf) != size:
        raise CorruptionError(path, offset, f"record LSN {lsn} is cut short ({len(buf)} of {size})")
    h = unpack_record_header(buf, 0)
    if h.lsn != lsn or h.size != size or xxh3(memoryview(buf)[8:size], seed) != h.checksum:
        raise CorruptionError(path, offset, f"record LSN {lsn} no longer verifies at its place")
    body = memoryview(buf)[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + h.length]
    dictionary = None
    if h.codec == CODEC_ZSTD_DICT:
        dictionary = _segment_dictionary(fs, path, {} if dictionaries is None else dictionaries)
    try:
        payload = decompress(h.codec, body, h.raw_length, dictionary)
    except ValueError as exc:
        raise CorruptionError(path, offset, str(exc)) from exc
    return Record(h.lsn, h.type, payload)


def _segment_dictionary(
    fs: FileSystem, path: str, cache: dict[str, Dictionary]
) -> Dictionary | None:
    """The dictionary of the segment at ``path``, from ``cache`` or its verified header
    (``CorruptionError`` if the header no longer verifies; None if it has none)."""
    found = cache.get(path)
    if found is not None:
        return found
    name = os.path.basename(path)
    parsed = parse_segment_name(name)
    if parsed is None:
        return None
    seg = SegmentFile(name, path, *parsed)
    try:
        header = read_segment_header(read_head(fs, seg), seg, None)
    except FileNotFoundError:
        raise NotFoundError(f"lsn: segment {path} is gone (discarded by another handle)") from None
    dictionary = Dictionary.of(header.dictionary)
    if dictionary is not None:
        cache[path] = dictionary
    return dictionary
