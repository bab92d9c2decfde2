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

Discards (§2.2): another process may discard the segment a view ends in. Whenever the log has
changed since the view was taken, :func:`follow` first looks at ``wal/START``; when it names a
later segment than the view's, the view's segment is no longer part of the log (whether or not
its file is still there: a crash may have left it), so following continues at START's segment,
from START's first LSN and chain seed, which that segment's header must carry. The records in
between are skipped, never delivered: the caller is handed START (and so the anchor standing
in for them) instead. A view whose segment is gone while no START covers it is
``CorruptionError``: nothing is ever skipped silently.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from wfstate.errors import CorruptionError
from wfstate.format import (
    RECORD_HEADER_SIZE,
    LogStart,
    broken_name,
    segment_codecs,
    segment_name,
)
from wfstate.fs import FileSystem
from wfstate.wal.codec import Dictionary, decompress
from wfstate.wal.reader import LogDamage, Record, TailPosition, list_segments
from wfstate.wal.recovery import cut_tail, move_aside
from wfstate.wal.segment import (
    Cursor,
    SegmentFile,
    durable_after,
    header_is_torn_creation,
    read_head,
    read_segment_header,
    walk,
)
from wfstate.wal.start import check_start_segment, newer_start, start_path, start_segment_file


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
    start: LogStart | None
    """The START in effect now (the one given to :func:`follow` unless a newer one was met)."""
    jumped: bool
    """Whether the view's segment had been discarded and following went on at START's
    segment. The records from START's first LSN on are then from START's segment; any before
    it were read (verified) before the discard was seen, and those between were skipped."""


def follow(
    fs: FileSystem,
    wal_dir: str,
    tail: TailPosition,
    *,
    repair: bool,
    decode: bool,
    start: LogStart | None,
) -> Followed:
    """Advance ``tail`` over every valid record appended after it (module docstring).

    ``start``: the START the view was taken under (None: none). ``decode``: decompress the
    payloads of the records passed. ``CorruptionError`` when the log is no longer the one
    ``tail`` was read from (it is shorter than ``tail``, its segment went away with no START
    covering it, or START moved back), when a segment after it does not continue the chain,
    when START's segment does not match START, or (``repair``) when the bytes after the valid
    end are damage to durable data rather than a torn write.
    """
    records: list[Passed] = []
    damage: list[LogDamage] = []
    jumped = False
    moved = newer_start(fs, wal_dir, start)
    if moved is not None:
        start = moved
        if moved.seq > tail.segment.seq:
            tail, jumped = _at_start(fs, wal_dir, moved, tail), True
    while True:
        seg = tail.segment
        try:
            size = fs.file_size(seg.path)
        except FileNotFoundError:
            # Discarded since START was read above (only a reader, holding no lock, can see
            # that): a newer START covers it, or the log was cut under this process.
            moved = newer_start(fs, wal_dir, start)
            if moved is None or moved.seq <= seg.seq:
                raise CorruptionError(
                    seg.path,
                    tail.offset,
                    "the segment this process reads no longer exists and START does not "
                    "discard it: the log was cut or replaced under it; reopen the store",
                ) from None
            start = moved
            tail, jumped = _at_start(fs, wal_dir, moved, tail), True
            continue
        if size < tail.offset:
            raise CorruptionError(
                seg.path,
                size,
                f"the segment ends before offset {tail.offset}, which this process already "
                "read: the log was cut or replaced under it; reopen the store",
            )
        if size > tail.offset:
            buf = fs.read_range(seg.path, tail.offset, size - tail.offset)
            dictionary = tail.dictionary
            cur = Cursor(0, tail.seed, tail.next_lsn, segment_codecs(dictionary is not None))
            seed = tail.seed
            for offset, h in walk(buf, cur):
                payload = b""
                if decode:
                    body = memoryview(buf)[offset + RECORD_HEADER_SIZE :][: h.length]
                    try:
                        payload = decompress(h.codec, body, h.raw_length, dictionary)
                    except ValueError as exc:
                        raise CorruptionError(seg.path, tail.offset + offset, str(exc)) from exc
                record = Record(h.lsn, h.type, payload)
                records.append(Passed(record, seg, tail.offset + offset, h.size, seed))
                seed = h.checksum
            end = tail.offset + cur.offset
            tail = TailPosition(seg, end, cur.seed, cur.lsn, tail.epoch, dictionary)
            if cur.reason is not None:
                if repair:
                    damage.append(_repair_tail(fs, wal_dir, tail, buf=buf, cur=cur, size=size))
                return Followed(tail, records, damage, start, jumped)
        following = _next_segment(fs, wal_dir, tail, repair=repair, damage=damage)
        if following is None:
            return Followed(tail, records, damage, start, jumped)
        tail = following


def _at_start(fs: FileSystem, wal_dir: str, start: LogStart, tail: TailPosition) -> TailPosition:
    """The position at the beginning of START's segment, which discards ``tail``'s, once
    START belongs to this log (its epoch, and no LSN this view already passed) and its
    segment's header matches it."""
    if start.epoch != tail.epoch:
        raise CorruptionError(
            start_path(wal_dir),
            16,
            f"START names store epoch {start.epoch:#x}, this log is {tail.epoch:#x}",
        )
    if start.first_lsn < tail.next_lsn:
        raise CorruptionError(
            start_path(wal_dir),
            32,
            f"START discards segment {tail.segment.seq} but starts at LSN {start.first_lsn}, "
            f"before LSN {tail.next_lsn} this process already read: the log was replaced "
            "under it; reopen",
        )
    header = check_start_segment(fs, wal_dir, start)
    seg = start_segment_file(wal_dir, start)
    return TailPosition(
        seg,
        header.size,
        start.prev_checksum,
        start.first_lsn,
        tail.epoch,
        Dictionary.of(header.dictionary),
    )


def _repair_tail(
    fs: FileSystem, wal_dir: str, tail: TailPosition, *, buf: bytes, cur: Cursor, size: int
) -> LogDamage:
    """Judge and cut the invalid bytes after ``tail`` (the lock is held); the damage found."""
    seg = tail.segment
    reason = cur.reason or "invalid record"
    if durable_after(buf, cur.offset, cur.lsn, cur.codecs) is not None:
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
        head = read_head(fs, seg)
    except FileNotFoundError:  # discarded since (a reader's race): the next follow jumps
        return None
    try:
        header = read_segment_header(head, seg, tail.epoch)
    except CorruptionError as exc:
        if not repair:
            return None  # its creator may still be writing its header
        buf = fs.read_file(path)
        if not header_is_torn_creation(buf, seg.first_lsn):
            raise
        move_aside(fs, path, os.path.join(wal_dir, broken_name(name, 0)))
        fs.fsync_dir(wal_dir)
        damage.append(LogDamage("torn_segment", path, 0, len(buf), exc.reason))
        return None
    if header.prev_checksum != tail.seed:
        raise CorruptionError(path, 0, "segment does not continue the previous segment's chain")
    return TailPosition(
        seg,
        header.size,
        header.prev_checksum,
        tail.next_lsn,
        tail.epoch,
        Dictionary.of(header.dictionary),
    )
