"""Recovery of a log directory before it is written to: find the end, repair, keep evidence.

Run by :meth:`wfstate.wal.Log.open`. What the recovery mode decides to cut is never destroyed:
bytes cut from a segment are written to ``<segment>.broken-<offset>`` (atomic write: temp,
fsync, rename, directory fsync) *before* the segment is truncated, and whole segments are moved
into ``quarantine/`` (directory fsynced) before anything else changes. A crash at any point of a
repair leaves a log that the same recovery repairs again to the same result.

The log starts where ``wal/START`` says (docs/format.md §2.2). A START that breaks a rule is
refused in every mode (it alone says which segments were discarded, so nothing can be repaired
without it). Segment files before START's segment are deleted, in every mode, once recovery
succeeded: they are what a crash left of a committed discard, and deleting them again is
idempotent. The only segment files ever deleted are those; evidence of damage is still kept.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from typing import NamedTuple

from wfstate.errors import CorruptionError, TornWriteError
from wfstate.format import (
    QUARANTINE_DIR,
    SEGMENT_HEADER_SIZE,
    DurabilityHint,
    LogStart,
    SegmentHeader,
    broken_name,
    genesis_checksum,
    pack_segment_header,
    read_hint,
    segment_name,
)
from wfstate.fs import FileSystem, atomic_write, make_dirs
from wfstate.wal.reader import (
    DamageCallback,
    LogDamage,
    LogScan,
    RecoveryMode,
    TailPosition,
    log_files,
    store_epoch,
)
from wfstate.wal.segment import (
    SegmentFile,
    header_is_torn_creation,
    read_head,
    read_segment_header,
)
from wfstate.wal.start import check_start_segment, start_path


class Recovered(NamedTuple):
    """The outcome of recovery: where appends continue, what was found and repaired, and the
    START the log starts at (None: segment 1)."""

    tail: TailPosition
    damage: list[LogDamage]
    start: LogStart | None


def create_segment(fs: FileSystem, wal_dir: str, header: SegmentHeader) -> tuple[SegmentFile, int]:
    """Create a segment and make its header and directory entry durable; returns it and an fd.

    The header and its dictionary block (``header.dictionary``) go in one write. No record may
    be written to a segment before this returns (docs/format.md §2.1), which is what lets
    recovery treat a segment with a bad header and no data as a torn creation.

    The descriptor returned appends (``O_APPEND``): other handles append to the same segment
    between this handle's write groups, so a descriptor writing at its own position would
    write over their records (acknowledged ones lost, found by the two-handle crash tests).
    """
    name = segment_name(header.seq, header.first_lsn)
    path = os.path.join(wal_dir, name)
    fd = fs.create_exclusive(path)
    try:
        fs.write(fd, pack_segment_header(header))
        fs.fsync(fd)
        fs.fsync_dir(wal_dir)
        appending = fs.open_append(path)
    finally:
        fs.close(fd)
    return SegmentFile(name, path, header.seq, header.first_lsn), appending


def new_epoch() -> int:
    """A random non-zero store epoch."""
    while (epoch := secrets.randbits(64)) == 0:
        pass
    return epoch


def recover(
    fs: FileSystem,
    wal_dir: str,
    *,
    mode: RecoveryMode,
    on_damage: DamageCallback | None,
    epoch: int | None,
    hint: bytes = b"",
) -> Recovered:
    """Find the end of the log in ``wal_dir`` under ``mode`` and repair it for appending.

    Creates the directory and a first segment (with ``epoch``, or a random one) if there is
    none. In ``tolerate_torn_tail`` only the last segment is read (older segments were synced
    before their successors were created and are checked when read), after checking that the
    segment names have no gaps and that START's segment matches START; the other modes read
    the whole log. Raises ``CorruptionError`` / ``TornWriteError`` when the mode does not allow
    going on, having changed nothing.

    When the salvage modes leave nothing readable, the log is begun again empty: at segment 1
    and LSN 1 when there is no START, else at START's segment, first LSN and chain seed (the
    anchor still stands for everything before it, and no discarded segment can come back).

    ``hint`` is what ``LOCK`` held before anything was repaired (docs/format.md §8.1). An intact
    hint of the log's epoch is checked: when it is poisoned, the records after its durable LSN
    are cut from the last segment as a torn tail (a sync of them failed: the page cache may
    show them while the disk never will); when the log ends before its durable LSN, durable
    records are missing, which is corruption (raised in ``tolerate_torn_tail`` and
    ``absolute`` before anything more is changed, reported in the salvage modes).
    """
    make_dirs(fs, wal_dir)
    damage: list[LogDamage] = []

    def report(d: LogDamage) -> None:
        damage.append(d)
        if on_damage is not None:
            on_damage(d)

    start, segments, leftovers = log_files(fs, wal_dir)
    set_aside_torn_creation = False
    if segments and (start is None or segments[-1].seq > start.seq):
        # Only the last segment can be a torn creation: every earlier one had its header
        # synced before its successor was created. START's segment never is one: a discard
        # names only a segment whose header is durable.
        last = segments[-1]
        try:
            read_segment_header(read_head(fs, last), last, None)
        except CorruptionError as exc:
            buf = fs.read_file(last.path)
            if header_is_torn_creation(buf, last.first_lsn):
                if mode == "absolute":
                    raise TornWriteError(
                        last.path, 0, f"torn segment header: {exc.reason}"
                    ) from exc
                report(LogDamage("torn_segment", last.path, 0, len(buf), exc.reason))
                move_aside(fs, last.path, os.path.join(wal_dir, broken_name(last.name, 0)))
                fs.fsync_dir(wal_dir)
                segments.pop()
                set_aside_torn_creation = True
    if mode in ("tolerate_torn_tail", "absolute"):
        _check_contiguous(wal_dir, segments, start)
        if start is not None:
            check_start_segment(fs, wal_dir, start)
    store = start.epoch if start is not None else store_epoch(fs, segments)
    hinted = read_hint(hint, store) if store is not None else None
    if hinted is not None and hinted.poisoned and _created_after(segments, start, hinted):
        # Created (or written) after the last durable LSN, before a sync failed: even its
        # header may never reach the disk. Its predecessor was synced before it began.
        last = segments.pop()
        report(
            LogDamage(
                "torn_segment",
                last.path,
                0,
                fs.file_size(last.path),
                f"segment created after LSN {hinted.durable_lsn}, the last durable one, "
                "before a sync failed (poisoned LOCK hint): it may never reach the disk",
            )
        )
        move_aside(fs, last.path, os.path.join(wal_dir, broken_name(last.name, 0)))
        fs.fsync_dir(wal_dir)
        set_aside_torn_creation = True
    from_lsn = segments[-1].first_lsn if mode == "tolerate_torn_tail" and segments else 1
    scan = LogScan(
        fs,
        wal_dir,
        mode=mode,
        from_lsn=from_lsn,
        on_damage=report,
        segments=segments,
        start=start,
        epoch=store,
        last_may_be_torn=not set_aside_torn_creation,
    )
    untrusted: list[TailPosition] = []  # where the records after a poisoned hint begin

    def locate(seg: SegmentFile, lsn: int, offset: int, _size: int, seed: int) -> None:
        if (
            hinted is not None
            and hinted.poisoned
            and not untrusted
            and lsn > hinted.durable_lsn
            and seg.seq == segments[-1].seq
            and store is not None
        ):
            untrusted.append(TailPosition(seg, offset, seed, lsn, store))

    # The salvage modes decode every payload, so that a record that verifies but does not
    # decompress is judged by the mode too; the default mode only needs the chain.
    if mode == "tolerate_torn_tail":
        for _ in scan.headers(located=locate):
            pass
    else:
        for _ in scan.records(located=locate):
            pass
    tail = _trusted_tail(scan.tail, untrusted, hinted, report)
    if hinted is not None:
        _check_durable_end(
            wal_dir, mode, tail, start, durable_lsn=hinted.durable_lsn, report=report
        )
    keep = [s for s in segments if tail is not None and s.seq <= tail.segment.seq]
    later = segments[len(keep) :]
    if later:
        quarantine = os.path.join(wal_dir, QUARANTINE_DIR)
        make_dirs(fs, quarantine)
        for seg in later:
            move_aside(fs, seg.path, os.path.join(quarantine, seg.name))
        fs.fsync_dir(quarantine)
        fs.fsync_dir(wal_dir)
    if tail is None:  # nothing readable is left: begin the log again (evidence is kept)
        chosen = store or epoch or new_epoch()
        if start is not None:
            header = SegmentHeader(chosen, start.seq, start.first_lsn, start.prev_checksum)
        else:  # LSNs restart at 1
            header = SegmentHeader(chosen, 1, 1, genesis_checksum(chosen))
        seg, fd = create_segment(fs, wal_dir, header)
        fs.close(fd)
        tail = TailPosition(
            seg, SEGMENT_HEADER_SIZE, header.prev_checksum, header.first_lsn, chosen
        )
        delete_segments(fs, wal_dir, leftovers)
        return Recovered(tail, damage, start)
    cut_tail(fs, tail.segment, tail.offset)
    if any(d.kind == "corruption" and d.path == tail.segment.path for d in damage):
        # skip_corrupted left damaged bytes in place in the segment the log ends in: a record
        # appended after them could sit where no reader resynchronises (an unaligned offset),
        # so appends start a new segment, chained to the last valid record.
        header = SegmentHeader(tail.epoch, tail.segment.seq + 1, tail.next_lsn, tail.seed)
        seg, fd = create_segment(fs, wal_dir, header)
        fs.close(fd)
        tail = TailPosition(seg, SEGMENT_HEADER_SIZE, tail.seed, tail.next_lsn, tail.epoch)
    delete_segments(fs, wal_dir, leftovers)
    return Recovered(tail, damage, start)


def _created_after(
    segments: list[SegmentFile], start: LogStart | None, hinted: DurabilityHint
) -> bool:
    """Whether the last segment begins after the hint's durable LSN and may be set aside: not
    the log's first segment (its header was synced when the log or START was made)."""
    if not segments:
        return False
    first_seq = start.seq if start is not None else 1
    last = segments[-1]
    return last.seq > first_seq and last.first_lsn > hinted.durable_lsn


def _trusted_tail(
    tail: TailPosition | None,
    untrusted: list[TailPosition],
    hinted: DurabilityHint | None,
    report: DamageCallback,
) -> TailPosition | None:
    """``tail``, or where the records written before a failed sync begin (poisoned hint)."""
    if not untrusted or tail is None or hinted is None:
        return tail
    cut = untrusted[0]._replace(dictionary=tail.dictionary)
    if tail.segment != cut.segment or tail.offset <= cut.offset:
        return tail
    report(
        LogDamage(
            "torn_tail",
            cut.segment.path,
            cut.offset,
            tail.offset - cut.offset,
            f"LSNs {cut.next_lsn}..{tail.next_lsn - 1} were written before a sync that failed "
            f"(poisoned LOCK hint at LSN {hinted.durable_lsn}); they may never reach the disk",
        )
    )
    return cut


def _check_durable_end(
    wal_dir: str,
    mode: RecoveryMode,
    tail: TailPosition | None,
    start: LogStart | None,
    *,
    durable_lsn: int,
    report: DamageCallback,
) -> None:
    """Durable records are missing when the log ends before the hint's ``durable_lsn``:
    corruption, raised unless ``mode`` salvages (docs/format.md §8.1)."""
    if tail is not None:
        ends_at, where, offset = tail.next_lsn - 1, tail.segment.path, tail.offset
    else:
        ends_at, where, offset = (start.first_lsn - 1 if start is not None else 0), wal_dir, 0
    if ends_at >= durable_lsn:
        return
    reason = (
        f"the log ends at LSN {ends_at} but every record up to LSN {durable_lsn} was durable "
        "(LOCK hint, format §8.1): durable records are missing"
    )
    report(LogDamage("corruption", where, offset, 0, reason))
    if mode in ("tolerate_torn_tail", "absolute"):
        raise CorruptionError(where, offset, reason)


def delete_segments(fs: FileSystem, wal_dir: str, segments: list[SegmentFile]) -> None:
    """Delete discarded segment files, lowest first, then make that durable (§2.2).

    Only ever called for segments before START's, once START is durable: a crash part way
    leaves files that are not part of the log, which the next open deletes again.
    """
    if not segments:
        return
    for seg in sorted(segments, key=lambda s: s.seq):
        with contextlib.suppress(FileNotFoundError):  # already gone: nothing to delete
            fs.unlink(seg.path)
    fs.fsync_dir(wal_dir)


def _check_contiguous(wal_dir: str, segments: list[SegmentFile], start: LogStart | None) -> None:
    first_seq = start.seq if start is not None else 1
    if not segments:
        if start is not None:
            raise CorruptionError(
                start_path(wal_dir), 24, f"START names segment {first_seq}, which does not exist"
            )
        return
    if segments[0].seq != first_seq:
        if start is not None:
            raise CorruptionError(
                start_path(wal_dir), 24, f"START names segment {first_seq}, which does not exist"
            )
        raise CorruptionError(
            segments[0].path, 0, f"segments before seq {segments[0].seq} are missing"
        )
    for before, after in itertools.pairwise(segments):
        if after.seq != before.seq + 1:
            raise CorruptionError(
                after.path, 0, f"segments {before.seq + 1}..{after.seq - 1} are missing"
            )


def _free_name(fs: FileSystem, path: str) -> str:
    """``path``, or ``path.1``, ``path.2`` … : the first name not taken (evidence never
    overwrites evidence)."""
    candidate, n = path, 0
    while fs.exists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate


def move_aside(fs: FileSystem, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, or to the first free ``dst.N``; the caller syncs the dir."""
    fs.replace(src, _free_name(fs, dst))


def cut_tail(fs: FileSystem, seg: SegmentFile, offset: int) -> None:
    """Truncate ``seg`` to ``offset``, first keeping the bytes cut as evidence.

    The evidence file is complete and durable (atomic write) before the truncation. If the
    same bytes were already kept (a crash after the evidence, before the truncation, then
    recovery again), they are not written twice; different bytes get a fresh name.
    """
    size = fs.file_size(seg.path)
    if size <= offset:
        return
    cut = fs.read_range(seg.path, offset, size - offset)
    evidence = os.path.join(os.path.dirname(seg.path), broken_name(seg.name, offset))
    candidate, n = evidence, 0
    while fs.exists(candidate) and fs.read_file(candidate) != cut:
        n += 1
        candidate = f"{evidence}.{n}"
    if not fs.exists(candidate):
        atomic_write(fs, candidate, cut)
    fd = fs.open_append(seg.path)
    try:
        fs.truncate(fd, offset)
        fs.fsync(fd)
    finally:
        fs.close(fd)
