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

from wfstate.errors import CorruptionError, NotFoundError, TornWriteError, ValidationError
from wfstate.format import LogStart, RecordHeader, parse_segment_name
from wfstate.fs import FileSystem
from wfstate.wal.codec import Dictionary, decompress
from wfstate.wal.segment import (
    Cursor,
    SegmentFile,
    durable_after,
    header_is_torn_creation,
    read_head,
    read_segment_header,
    resync,
    walk,
)
from wfstate.wal.start import read_start, start_path, start_segment_mismatch

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
    dictionary: Dictionary | None = None
    """The segment's dictionary (docs/format.md §2.1.1), if it has one."""


def segment_files(fs: FileSystem, wal_dir: str) -> list[SegmentFile]:
    """Every segment file of ``wal_dir`` in sequence order, whether part of the log or not
    (gaps are the scan's to judge; files before START are :func:`log_files`' to set apart)."""
    found: list[SegmentFile] = []
    for name in fs.listdir(wal_dir):
        parsed = parse_segment_name(name)
        if parsed is not None:
            seq, first_lsn = parsed
            found.append(SegmentFile(name, os.path.join(wal_dir, name), seq, first_lsn))
    found.sort(key=lambda s: s.seq)
    return found


class LogFiles(NamedTuple):
    """The files of a log directory: its START, its segments, and segment files left over."""

    start: LogStart | None
    """The log start (docs/format.md §2.2); None when the log starts at segment 1."""
    segments: list[SegmentFile]
    """The segment files from START's segment on, in sequence order: the log."""
    leftovers: list[SegmentFile]
    """Segment files before START's segment: discarded, never read (recovery deletes them)."""


def log_files(fs: FileSystem, wal_dir: str) -> LogFiles:
    """The START and the segment files of ``wal_dir``, split at START (§2.2).

    The directory is listed *before* START is read. A discard renames START into place before
    it deletes any segment, so a listing that already lacks a discarded segment is always
    paired with the START that discarded it: no reader mistakes a discard for a missing
    segment. ``CorruptionError`` for a START that breaks a rule of §2.2.
    """
    files = segment_files(fs, wal_dir)
    start = read_start(fs, wal_dir)
    if start is None:
        return LogFiles(None, files, [])
    keep = [s for s in files if s.seq >= start.seq]
    return LogFiles(start, keep, files[: len(files) - len(keep)])


def list_segments(fs: FileSystem, wal_dir: str) -> list[SegmentFile]:
    """The segment files of the log in ``wal_dir`` in sequence order: from the segment START
    names on (every segment when there is no START); discarded leftovers are not listed."""
    return log_files(fs, wal_dir).segments


DamageCallback = Callable[[LogDamage], None]
LocatedCallback = Callable[[SegmentFile, int, int, int, int], None]


class LogScan:
    """One pass over the records of a log directory under a recovery mode.

    Iterate :meth:`records` (or :meth:`headers`, which skips decompression). After the
    iteration, :attr:`tail` is where the valid log ends: the end of the last segment read whole,
    or the damaged offset where the mode ended the log (None if stopped early by ``to_lsn``, or
    if nothing at all was readable). :attr:`damage` lists everything reported.

    The log starts where its START says (docs/format.md §2.2): segment files before START's
    segment are never read, and START's segment must carry START's epoch, first LSN and chain
    seed. ``from_lsn`` below the log's first LSN (:attr:`first_lsn`) starts at that first LSN;
    otherwise the scan starts at the segment holding ``from_lsn``, trusting that segment's
    header for the chain. ``to_lsn`` stops after that LSN without looking further (for reading
    a log while it is being appended to). ``epoch`` is the store's epoch; when None it is
    START's, or taken from the first segment's header, so that a segment of another store is
    refused wherever the scan starts. ``segments`` and ``start`` (given together, by recovery)
    replace listing the directory and reading START. ``last_may_be_torn=False`` judges the last
    segment like every other (recovery passes it after setting aside a torn segment creation:
    its predecessor was synced before it began).
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
        start: LogStart | None = None,
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
        if segments is None:
            start, segments, _leftovers = log_files(fs, wal_dir)
        self._segments = segments
        self.start = start
        """The START the scan honours (None: the log starts at segment 1)."""
        self.damage: list[LogDamage] = []
        self.tail: TailPosition | None = None
        if epoch is None:
            epoch = start.epoch if start is not None else store_epoch(fs, segments)
        self.epoch: int | None = epoch

    @property
    def first_lsn(self) -> int:
        """The LSN the log starts at: START's first LSN, or 1."""
        return self.start.first_lsn if self.start is not None else 1

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
        for seg, buf, offset, h, seed, dictionary in self._scan():
            if located is not None:
                located(seg, h.lsn, offset, h.size, seed)
            body = memoryview(buf)[offset + 32 : offset + 32 + h.length]
            try:
                payload = decompress(h.codec, body, h.raw_length, dictionary)
            except ValueError as exc:
                self._corrupt(seg, offset, h.size, str(exc))
                if self._mode == "point_in_time" and self.epoch is not None:
                    self.tail = TailPosition(seg, offset, seed, h.lsn, self.epoch, dictionary)
                    return
                continue
            yield Record(h.lsn, h.type, payload)

    def headers(
        self, *, located: LocatedCallback | None = None
    ) -> Iterator[tuple[SegmentFile, int, RecordHeader]]:
        """``(segment, offset, header)`` of each valid record, without decoding payloads
        (``located`` as for :meth:`records`)."""
        for seg, _buf, offset, h, seed, _dictionary in self._scan():
            if located is not None:
                located(seg, h.lsn, offset, h.size, seed)
            yield seg, offset, h

    def _corrupt(self, seg: SegmentFile, offset: int, length: int, reason: str) -> None:
        """Report corruption; raise unless the mode goes on past it."""
        self._corrupt_at(seg.path, offset, length, reason)

    def _corrupt_at(self, path: str, offset: int, length: int, reason: str) -> None:
        self._report(LogDamage("corruption", path, offset, length, reason))
        if self._mode in ("tolerate_torn_tail", "absolute"):
            raise CorruptionError(path, offset, reason)

    def _read_segment(self, seg: SegmentFile) -> bytes:
        """The bytes of ``seg``. A segment that vanished since the listing was discarded by
        another process (``NotFoundError`` when a newer START covers it) or removed by hand
        (``CorruptionError``)."""
        try:
            return self._fs.read_file(seg.path)
        except FileNotFoundError:
            now = read_start(self._fs, self._dir)
            if now is not None and now.seq > seg.seq:
                raise NotFoundError(
                    f"lsn: the records of {seg.name} were discarded while they were read "
                    f"(the log now starts at LSN {now.first_lsn})"
                ) from None
            raise CorruptionError(seg.path, 0, "segment file disappeared while read") from None

    def _scan(
        self,
    ) -> Iterator[tuple[SegmentFile, bytes, int, RecordHeader, int, Dictionary | None]]:
        """``(segment, its bytes, offset, header, the record's chain seed, the segment's
        dictionary)`` per valid record."""
        segments = self._segments
        first_seq = self.start.seq if self.start is not None else 1
        if not segments:
            if self.start is not None:
                reason = f"START names segment {first_seq}, which does not exist"
                self._corrupt_at(start_path(self._dir), 24, 0, reason)
            return
        from_lsn = max(self._from_lsn, self.first_lsn)
        start = 0
        for i, seg in enumerate(segments):
            if seg.first_lsn <= from_lsn:
                start = i
        first = segments[start]
        if from_lsn < first.first_lsn and first.seq != first_seq:
            if self.start is not None and segments[0].seq != first_seq:
                reason = f"START names segment {first_seq}, which does not exist"
                self._corrupt_at(start_path(self._dir), 24, 0, reason)
            else:
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
            buf = self._read_segment(seg)
            try:
                header = read_segment_header(buf, seg, self.epoch)
            except CorruptionError as exc:
                if last and header_is_torn_creation(buf, seg.first_lsn):
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
            if self.start is not None and seg.seq == self.start.seq:
                mismatch = start_segment_mismatch(self.start, header)
                if mismatch is not None:
                    self._corrupt(seg, mismatch[0], 0, f"does not match START: {mismatch[1]}")
                    if self._mode == "point_in_time":
                        return
            if chain is not None and chain != (header.prev_checksum, header.first_lsn):
                reason = "segment does not continue the previous segment's chain"
                self._corrupt(seg, 0, 0, reason)
                if self._mode == "point_in_time":
                    return
            codecs = header.codecs
            dictionary = Dictionary.of(header.dictionary)
            cur = Cursor(header.size, header.prev_checksum, header.first_lsn, codecs)
            while True:
                seed = cur.seed
                for offset, h in walk(buf, cur):
                    if h.lsn >= from_lsn:
                        yield seg, buf, offset, h, seed, dictionary
                        if self._to_lsn is not None and h.lsn >= self._to_lsn:
                            self.tail = None
                            return
                    seed = h.checksum
                if cur.reason is None:
                    break
                damaged_at = cur.offset
                resumed = None
                if last and durable_after(buf, damaged_at, cur.lsn, codecs) is not None:
                    resumed = resync(buf, damaged_at, cur.lsn, codecs)
                if last and resumed is None:  # nothing durable after it: a torn tail
                    self._report(
                        LogDamage(
                            "torn_tail", seg.path, damaged_at, len(buf) - damaged_at, cur.reason
                        )
                    )
                    if self._mode == "absolute":
                        raise TornWriteError(seg.path, damaged_at, f"torn tail: {cur.reason}")
                    self.tail = TailPosition(
                        seg, damaged_at, cur.seed, cur.lsn, header.epoch, dictionary
                    )
                    return
                if not last:
                    resumed = resync(buf, damaged_at, cur.lsn, codecs)
                resume_at = resumed.offset if resumed is not None else len(buf)
                self._corrupt(seg, damaged_at, resume_at - damaged_at, cur.reason)
                if self._mode == "point_in_time":
                    self.tail = TailPosition(
                        seg, damaged_at, cur.seed, cur.lsn, header.epoch, dictionary
                    )
                    return
                if resumed is None:  # skip_corrupted: nothing verifies after it in this file
                    cur.offset = len(buf)
                    break
                cur = resumed
            prev, chain = seg, (cur.seed, cur.lsn)
            self.tail = TailPosition(seg, cur.offset, cur.seed, cur.lsn, header.epoch, dictionary)


def store_epoch(fs: FileSystem, segments: list[SegmentFile]) -> int | None:
    """The epoch in the header of the first segment, or None if it has no valid header."""
    if not segments:
        return None
    first = segments[0]
    head = read_head(fs, first)
    try:
        return read_segment_header(head, first, None).epoch
    except CorruptionError:
        return None
