"""Reading the log: segments in order, chained across files, under a recovery mode.

:class:`LogScan` walks the segments of a log directory and yields each valid record once, in
LSN order. What it does at damage depends on the recovery mode (docs/format.md §6); it never
changes a file — repairs are :mod:`wfstate.wal.recovery`'s job. Damage is reported through a
callback, LevelDB-reporter style, so callers decide what to log or count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import msgspec

from wfstate.errors import CorruptionError, TornWriteError, ValidationError
from wfstate.format import SEGMENT_HEADER_SIZE, RecordHeader, parse_segment_name
from wfstate.fs import FileSystem
from wfstate.wal.codec import decompress
from wfstate.wal.segment import (
    Cursor,
    SegmentFile,
    durable_after,
    header_is_torn_creation,
    read_segment_header,
    resync,
    walk,
)

RecoveryMode = Literal["tolerate_torn_tail", "absolute", "point_in_time", "skip_corrupted"]
RECOVERY_MODES: tuple[RecoveryMode, ...] = (
    "tolerate_torn_tail",
    "absolute",
    "point_in_time",
    "skip_corrupted",
)
DamageKind = Literal["torn_tail", "torn_segment", "corruption"]


def check_mode(mode: str) -> RecoveryMode:
    """``mode`` as a RecoveryMode, or ``ValidationError`` naming the field."""
    for known in RECOVERY_MODES:
        if mode == known:
            return known
    raise ValidationError("mode", f"must be one of {list(RECOVERY_MODES)}, not {mode!r}")


@dataclass(frozen=True, slots=True)
class LogDamage:
    """Damage found while reading: where, how many bytes, what kind, and why.

    ``kind`` is ``torn_tail`` (the unsynced end of the last segment, a clean end of the log),
    ``torn_segment`` (a last segment whose creation never became durable) or ``corruption``
    (durable bytes that went bad). ``length`` counts the bytes from ``offset`` that the reader
    did not accept (to the end of the file, or to where it resynchronised).
    """

    kind: DamageKind
    path: str
    offset: int
    length: int
    reason: str


class Record(NamedTuple):
    """One record of the log: its LSN, its type and its (decompressed) payload."""

    lsn: int
    type: int
    payload: bytes

    def decode(self) -> object:
        """The payload decoded as the msgspec MessagePack document the store layers write."""
        return msgspec.msgpack.decode(self.payload)


class TailPosition(NamedTuple):
    """Where the valid log ends: the place the next record goes, and the chain state there."""

    segment: SegmentFile
    offset: int
    seed: int
    next_lsn: int
    epoch: int


def list_segments(fs: FileSystem, wal_dir: str) -> list[SegmentFile]:
    """The segment files of ``wal_dir`` in sequence order (gaps are the scan's to judge)."""
    found: list[SegmentFile] = []
    for name in fs.listdir(wal_dir):
        parsed = parse_segment_name(name)
        if parsed is not None:
            seq, first_lsn = parsed
            found.append(SegmentFile(name, os.path.join(wal_dir, name), seq, first_lsn))
    found.sort(key=lambda s: s.seq)
    return found


DamageCallback = Callable[[LogDamage], None]
LocatedCallback = Callable[[SegmentFile, int, int, int, int], None]


class LogScan:
    """One pass over the records of a log directory under a recovery mode.

    Iterate :meth:`records` (or :meth:`headers`, which skips decompression). After the
    iteration, :attr:`tail` is where the valid log ends: the end of the last segment read whole,
    or the damaged offset where the mode ended the log (None if stopped early by ``to_lsn``, or
    if nothing at all was readable). :attr:`damage` lists everything reported.

    ``from_lsn`` starts at the segment holding that LSN, trusting that segment's header for the
    chain; ``to_lsn`` stops after that LSN without looking further (for reading a log while it
    is being appended to). ``epoch`` is the store's epoch; when None it is taken from the first
    segment's header, so that a segment of another store is refused wherever the scan starts.
    ``last_may_be_torn=False`` judges the last segment like every other (recovery passes it
    after setting aside a torn segment creation: its predecessor was synced before it began).
    """

    def __init__(
        self,
        fs: FileSystem,
        wal_dir: str,
        *,
        mode: RecoveryMode = "tolerate_torn_tail",
        from_lsn: int = 1,
        to_lsn: int | None = None,
        on_damage: DamageCallback | None = None,
        segments: list[SegmentFile] | None = None,
        epoch: int | None = None,
        last_may_be_torn: bool = True,
    ) -> None:
        self._fs = fs
        self._dir = wal_dir
        self._mode = mode
        self._from_lsn = from_lsn
        self._to_lsn = to_lsn
        self._on_damage = on_damage
        self._last_may_be_torn = last_may_be_torn
        self._segments = segments if segments is not None else list_segments(fs, wal_dir)
        self.damage: list[LogDamage] = []
        self.tail: TailPosition | None = None
        self.epoch: int | None = epoch if epoch is not None else store_epoch(fs, self._segments)

    def _report(self, damage: LogDamage) -> None:
        self.damage.append(damage)
        if self._on_damage is not None:
            self._on_damage(damage)

    def records(self, *, located: LocatedCallback | None = None) -> Iterator[Record]:
        """Each valid record with LSN in ``[from_lsn, to_lsn]``, payload decompressed.

        A record that verifies but does not decompress is corruption (a writer bug or a
        checksum collision): raised; under ``point_in_time`` reading ends there, under
        ``skip_corrupted`` it is skipped. Either way it is reported. ``located(segment, lsn,
        offset, size, seed)`` is told where each record yielded is (to index it).
        """
        for seg, buf, offset, h, seed in self._scan():
            if located is not None:
                located(seg, h.lsn, offset, h.size, seed)
            body = memoryview(buf)[offset + 32 : offset + 32 + h.length]
            try:
                payload = decompress(h.codec, body, h.raw_length)
            except ValueError as exc:
                self._corrupt(seg, offset, h.size, str(exc))
                if self._mode == "point_in_time" and self.epoch is not None:
                    self.tail = TailPosition(seg, offset, seed, h.lsn, self.epoch)
                    return
                continue
            yield Record(h.lsn, h.type, payload)

    def headers(self) -> Iterator[tuple[SegmentFile, int, RecordHeader]]:
        """``(segment, offset, header)`` of each valid record, without decoding payloads."""
        for seg, _buf, offset, h, _seed in self._scan():
            yield seg, offset, h

    def _corrupt(self, seg: SegmentFile, offset: int, length: int, reason: str) -> None:
        """Report corruption; raise unless the mode goes on past it."""
        self._report(LogDamage("corruption", seg.path, offset, length, reason))
        if self._mode in ("tolerate_torn_tail", "absolute"):
            raise CorruptionError(seg.path, offset, reason)

    def _scan(self) -> Iterator[tuple[SegmentFile, bytes, int, RecordHeader, int]]:
        """``(segment, its bytes, offset, header, the record's chain seed)`` per valid record."""
        segments = self._segments
        if not segments:
            return
        start = 0
        for i, seg in enumerate(segments):
            if seg.first_lsn <= self._from_lsn:
                start = i
        first = segments[start]
        if self._from_lsn < first.first_lsn and first.seq != 1:
            self._corrupt(first, 0, 0, f"segments before seq {first.seq} are missing")
            if self._mode == "point_in_time":
                return
        chain: tuple[int, int] | None = None  # (seed, next lsn) after the previous segment
        prev: SegmentFile | None = None
        for index in range(start, len(segments)):
            seg = segments[index]
            last = index == len(segments) - 1 and self._last_may_be_torn
            if prev is not None and seg.seq != prev.seq + 1:
                self._corrupt(seg, 0, 0, f"segments {prev.seq + 1}..{seg.seq - 1} are missing")
                if self._mode == "point_in_time":
                    return
                chain = None
            buf = self._fs.read_file(seg.path)
            try:
                header = read_segment_header(buf, seg, self.epoch)
            except CorruptionError as exc:
                if last and header_is_torn_creation(buf):
                    self._report(LogDamage("torn_segment", seg.path, 0, len(buf), exc.reason))
                    if self._mode == "absolute":
                        raise TornWriteError(seg.path, 0, exc.reason) from exc
                    return
                self._corrupt(seg, exc.offset, len(buf), f"bad segment header: {exc.reason}")
                if self._mode == "point_in_time":
                    return
                prev, chain = seg, None  # skip_corrupted: nothing in it can be verified
                continue
            if self.epoch is None:
                self.epoch = header.epoch
            if chain is not None and chain != (header.prev_checksum, header.first_lsn):
                reason = "segment does not continue the previous segment's chain"
                self._corrupt(seg, 0, 0, reason)
                if self._mode == "point_in_time":
                    return
            cur = Cursor(SEGMENT_HEADER_SIZE, header.prev_checksum, header.first_lsn)
            while True:
                seed = cur.seed
                for offset, h in walk(buf, cur):
                    if h.lsn >= self._from_lsn:
                        yield seg, buf, offset, h, seed
                        if self._to_lsn is not None and h.lsn >= self._to_lsn:
                            self.tail = None
                            return
                    seed = h.checksum
                if cur.reason is None:
                    break
                damaged_at = cur.offset
                resumed = None
                if last and durable_after(buf, damaged_at, cur.lsn) is not None:
                    resumed = resync(buf, damaged_at, cur.lsn)
                if last and resumed is None:  # nothing durable after it: a torn tail
                    self._report(
                        LogDamage(
                            "torn_tail", seg.path, damaged_at, len(buf) - damaged_at, cur.reason
                        )
                    )
                    if self._mode == "absolute":
                        raise TornWriteError(seg.path, damaged_at, f"torn tail: {cur.reason}")
                    self.tail = TailPosition(seg, damaged_at, cur.seed, cur.lsn, header.epoch)
                    return
                if not last:
                    resumed = resync(buf, damaged_at, cur.lsn)
                resume_at = resumed.offset if resumed is not None else len(buf)
                self._corrupt(seg, damaged_at, resume_at - damaged_at, cur.reason)
                if self._mode == "point_in_time":
                    self.tail = TailPosition(seg, damaged_at, cur.seed, cur.lsn, header.epoch)
                    return
                if resumed is None:  # skip_corrupted: nothing verifies after it in this file
                    cur.offset = len(buf)
                    break
                cur = resumed
            prev, chain = seg, (cur.seed, cur.lsn)
            self.tail = TailPosition(seg, cur.offset, cur.seed, cur.lsn, header.epoch)


def store_epoch(fs: FileSystem, segments: list[SegmentFile]) -> int | None:
    """The epoch in the header of the first segment, or None if it has no valid header."""
    if not segments:
        return None
    first = segments[0]
    head = fs.read_range(first.path, 0, SEGMENT_HEADER_SIZE)
    try:
        return read_segment_header(head, first, None).epoch
    except CorruptionError:
        return None
