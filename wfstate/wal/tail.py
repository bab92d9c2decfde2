"""Following the end of a log that other processes append to (docs/format.md §8).

A process's view of the log ends at a :class:`TailPosition`: a segment, the offset where its
valid data ends, and the chain state there. :func:`follow` moves that position over whatever
other writers appended since: the rest of the segment, then the next segment if one was
created (its name is fixed by the next sequence number and the next LSN, and its header must
continue the chain). Every record it passes verifies by chain from the position, so nothing
stale, foreign or half written is ever taken.

Two callers, two rules for invalid bytes after the valid end:

* a reader (``repair=False``, no lock held) stops there and judges nothing: a writer may be in
  the middle of writing them;
* the lock holder (``repair=True``) knows nobody is writing, so they were left by a writer that
  died holding the lock. They are judged as recovery judges the end of the log (§4): a torn
  tail unless a chain-verified ``AFTER_SYNC`` record follows, in which case, or when a later
  segment exists, it is corruption (``CorruptionError``, nothing changed). A torn tail is cut
  with its bytes kept as evidence, a torn segment creation set aside, as at open (§6).

Crash reasoning for the repair: it is the same repair recovery makes (evidence first, durable,
then the cut), so a crash in the middle leaves what the next lock holder or opener repairs to
the same result. Only invalid bytes are ever cut, so no record a reader already took goes away.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from wfstate.errors import CorruptionError
from wfstate.format import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, broken_name, segment_name
from wfstate.fs import FileSystem
from wfstate.wal.codec import decompress
from wfstate.wal.reader import LogDamage, Record, TailPosition, list_segments
from wfstate.wal.recovery import cut_tail, move_aside
from wfstate.wal.segment import (
    Cursor,
    SegmentFile,
    durable_after,
    header_is_torn_creation,
    read_segment_header,
    walk,
)


class Passed(NamedTuple):
    """A record :func:`follow` passed, and where it is."""

    record: Record
    """Its payload is decompressed only when asked for (else empty)."""
    segment: SegmentFile
    offset: int
    size: int
    seed: int


class Followed(NamedTuple):
    """Where the log ends now, what was read to get there, and what was repaired."""

    tail: TailPosition
    records: list[Passed]
    """The records passed, in LSN order."""
    damage: list[LogDamage]


def follow(
    fs: FileSystem, wal_dir: str, tail: TailPosition, *, repair: bool, decode: bool
) -> Followed:
    """Advance ``tail`` over every valid record appended after it (module docstring).

    ``decode``: decompress the payloads of the records passed. ``CorruptionError`` when the
    log is no longer the one ``tail`` was read from (it is shorter than ``tail``), when a
    segment after it does not continue the chain, or (``repair``) when the bytes after the
    valid end are damage to durable data rather than a torn write.
    """
    records: list[Passed] = []
    damage: list[LogDamage] = []
    while True:
        seg = tail.segment
        size = fs.file_size(seg.path)
        if size < tail.offset:
            raise CorruptionError(
                seg.path,
                size,
                f"the segment ends before offset {tail.offset}, which this process already "
                "read: the log was cut or replaced under it; reopen the store",
            )
        if size > tail.offset:
            buf = fs.read_range(seg.path, tail.offset, size - tail.offset)
            cur = Cursor(0, tail.seed, tail.next_lsn)
            seed = tail.seed
            for offset, h in walk(buf, cur):
                payload = b""
                if decode:
                    body = memoryview(buf)[offset + RECORD_HEADER_SIZE :][: h.length]
                    try:
                        payload = decompress(h.codec, body, h.raw_length)
                    except ValueError as exc:
                        raise CorruptionError(seg.path, tail.offset + offset, str(exc)) from exc
                record = Record(h.lsn, h.type, payload)
                records.append(Passed(record, seg, tail.offset + offset, h.size, seed))
                seed = h.checksum
            end = tail.offset + cur.offset
            tail = TailPosition(seg, end, cur.seed, cur.lsn, tail.epoch)
            if cur.reason is not None:
                if repair:
                    damage.append(_repair_tail(fs, wal_dir, tail, buf=buf, cur=cur, size=size))
                return Followed(tail, records, damage)
        following = _next_segment(fs, wal_dir, tail, repair=repair, damage=damage)
        if following is None:
            return Followed(tail, records, damage)
        tail = following


def _repair_tail(
    fs: FileSystem, wal_dir: str, tail: TailPosition, *, buf: bytes, cur: Cursor, size: int
) -> LogDamage:
    """Judge and cut the invalid bytes after ``tail`` (the lock is held); the damage found."""
    seg = tail.segment
    reason = cur.reason or "invalid record"
    if durable_after(buf, cur.offset, cur.lsn) is not None:
        raise CorruptionError(seg.path, tail.offset, f"{reason}, and durable records follow it")
    later = [s.name for s in list_segments(fs, wal_dir) if s.seq > seg.seq]
    if later:
        raise CorruptionError(seg.path, tail.offset, f"{reason}, and later segments exist: {later}")
    cut_tail(fs, seg, tail.offset)
    return LogDamage("torn_tail", seg.path, tail.offset, size - tail.offset, reason)


def _next_segment(
    fs: FileSystem, wal_dir: str, tail: TailPosition, *, repair: bool, damage: list[LogDamage]
) -> TailPosition | None:
    """The position at the start of the segment after ``tail``'s, if another writer made it."""
    seq = tail.segment.seq + 1
    name = segment_name(seq, tail.next_lsn)
    path = os.path.join(wal_dir, name)
    if not fs.exists(path):
        return None
    seg = SegmentFile(name, path, seq, tail.next_lsn)
    try:
        header = read_segment_header(fs.read_range(path, 0, SEGMENT_HEADER_SIZE), seg, tail.epoch)
    except CorruptionError as exc:
        if not repair:
            return None  # its creator may still be writing its header
        buf = fs.read_file(path)
        if not header_is_torn_creation(buf):
            raise
        move_aside(fs, path, os.path.join(wal_dir, broken_name(name, 0)))
        fs.fsync_dir(wal_dir)
        damage.append(LogDamage("torn_segment", path, 0, len(buf), exc.reason))
        return None
    if header.prev_checksum != tail.seed:
        raise CorruptionError(path, 0, "segment does not continue the previous segment's chain")
    return TailPosition(seg, SEGMENT_HEADER_SIZE, header.prev_checksum, tail.next_lsn, tail.epoch)
