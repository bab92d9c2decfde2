"""The log start, ``wal/START``: reading it strictly, writing it atomically (docs/format.md §2.2).

``START`` is the commit point of a discard: once it names segment ``S``, the segments before
``S`` are not part of the log, whether their files still exist or not. So it is read strictly:
anything that does not satisfy every rule of the §2.2 table is :class:`CorruptionError` naming
the file, the offset of the broken field and the reason, and nothing is changed (a START that
cannot be trusted cannot say which segments are discarded, so no repair can start from it).

Crash reasoning for :func:`write_start`: it is an atomic write (temp file, fsync, rename, fsync
of ``wal/``), so a crash leaves the previous START (or none) or the new one, whole, never a torn
one; the new one is durable when the call returns. Only the holder of the writers' lock writes
it, and only once every segment it names and every record before it is durable.
"""

from __future__ import annotations

import os

from wfstate.errors import CorruptionError, FormatVersionError
from wfstate.format import (
    FILE_VERSIONS,
    FORMAT_VERSION,
    MAX_PAYLOAD,
    START_FILE,
    START_HEADER_CHECKED,
    START_HEADER_SIZE,
    START_MAGIC,
    START_MIN_SEQ,
    LogStart,
    SegmentHeader,
    pack_start,
    segment_name,
    unpack_start_header,
    xxh3,
)
from wfstate.fs import FileSystem, atomic_write
from wfstate.wal.segment import SegmentFile, read_head, read_segment_header


def start_path(wal_dir: str) -> str:
    """The path of ``wal_dir``'s START file."""
    return os.path.join(wal_dir, START_FILE)


def decode_start(buf: bytes, path: str) -> LogStart:
    """The START in ``buf`` (the whole file at ``path``), checked against every rule of §2.2.

    ``FormatVersionError`` for a newer version (only once the header checksum matches, so a
    damaged version field is corruption, not a version); ``CorruptionError`` for anything else
    that breaks a rule. A START names segment 2 or later; its epoch is never 0.
    """
    if len(buf) < START_HEADER_SIZE:
        raise CorruptionError(path, 0, f"START is short ({len(buf)} of 64 header bytes)")
    magic, version, header_size, length, epoch, seq, first_lsn, prev, anchor_check, check = (
        unpack_start_header(buf)
    )
    if magic != START_MAGIC:
        raise CorruptionError(path, 0, f"bad START magic {magic!r}")
    if check != xxh3(buf[:START_HEADER_CHECKED]):
        raise CorruptionError(path, 56, "START header checksum mismatch")
    if version > FORMAT_VERSION:
        raise FormatVersionError(path, version, FORMAT_VERSION)
    if version not in FILE_VERSIONS:
        raise CorruptionError(path, 8, f"START format version {version}: START is version 2+")
    if header_size != START_HEADER_SIZE:
        raise CorruptionError(path, 10, f"START header size {header_size}, not 64")
    if length > MAX_PAYLOAD:
        raise CorruptionError(path, 12, f"anchor length {length} is over {MAX_PAYLOAD}")
    if len(buf) != START_HEADER_SIZE + length:
        raise CorruptionError(
            path, 12, f"START is {len(buf)} bytes, its header says {START_HEADER_SIZE + length}"
        )
    if epoch == 0:
        raise CorruptionError(path, 16, "START names store epoch 0")
    if seq < START_MIN_SEQ or first_lsn < 1:
        raise CorruptionError(
            path, 24, f"START names seq {seq} / first LSN {first_lsn} (seq >= 2, LSN >= 1)"
        )
    anchor = bytes(buf[START_HEADER_SIZE:])
    if anchor_check != xxh3(anchor):
        raise CorruptionError(path, 48, "START anchor checksum mismatch")
    return LogStart(epoch, seq, first_lsn, prev, anchor)


def read_start(fs: FileSystem, wal_dir: str) -> LogStart | None:
    """The START of ``wal_dir``, or None when there is none (the log starts at segment 1)."""
    path = start_path(wal_dir)
    if not fs.exists(path):  # START is only ever replaced, never removed: no race here
        return None
    return decode_start(fs.read_file(path), path)


def newer_start(fs: FileSystem, wal_dir: str, known: LogStart | None) -> LogStart | None:
    """The START on disk if it names a later segment than ``known`` (None: no START), else None.

    For a process following the log (another process may discard under it): a START that went
    away, or that names an earlier segment than one already seen, means the log was replaced
    under this process (``CorruptionError``: reopen). Reads the 64-byte header, and the anchor
    only when the START changed.
    """
    path = start_path(wal_dir)
    if not fs.exists(path):
        if known is not None:
            raise CorruptionError(
                path, 0, "START went away: the log was replaced under this process; reopen"
            )
        return None
    head = fs.read_range(path, 0, START_HEADER_SIZE)
    if len(head) == START_HEADER_SIZE and xxh3(head[:START_HEADER_CHECKED]) == int.from_bytes(
        head[START_HEADER_CHECKED:], "little"
    ):
        seq = unpack_start_header(head)[5]
        if known is not None and seq == known.seq:
            return None
    start = read_start(fs, wal_dir)
    if start is None:  # removed between the two reads: replaced under this process
        return newer_start(fs, wal_dir, known)
    if known is not None and start.seq <= known.seq:
        if start.seq == known.seq:
            return None
        raise CorruptionError(
            path,
            24,
            f"START names segment {start.seq}, before segment {known.seq} it named earlier: "
            "the log was replaced under this process; reopen",
        )
    return start


def start_segment_mismatch(start: LogStart, header: SegmentHeader) -> tuple[int, str] | None:
    """``(offset in the segment header, reason)`` if the header of START's segment does not
    carry START's epoch, seq, first LSN and chain seed (§2.2), else None."""
    if header.epoch != start.epoch:
        return 16, f"segment epoch {header.epoch:#x} is not START's {start.epoch:#x}"
    if header.seq != start.seq or header.first_lsn != start.first_lsn:
        return 24, (
            f"segment seq {header.seq} / first LSN {header.first_lsn} is not START's "
            f"{start.seq} / {start.first_lsn}"
        )
    if header.prev_checksum != start.prev_checksum:
        return 40, "segment chain seed (prev_checksum) is not START's"
    return None


def start_segment_file(wal_dir: str, start: LogStart) -> SegmentFile:
    """The segment file START names (whether or not it exists)."""
    name = segment_name(start.seq, start.first_lsn)
    return SegmentFile(name, os.path.join(wal_dir, name), start.seq, start.first_lsn)


def check_start_segment(fs: FileSystem, wal_dir: str, start: LogStart) -> SegmentHeader:
    """Read the header of the segment START names and check it against START (§2.2).

    ``CorruptionError`` when that segment does not exist (naming START), or its header is
    invalid or disagrees with START (naming the segment).
    """
    seg = start_segment_file(wal_dir, start)
    try:
        head = read_head(fs, seg)
    except FileNotFoundError:
        raise CorruptionError(
            start_path(wal_dir), 24, f"START names segment {seg.name}, which does not exist"
        ) from None
    header = read_segment_header(head, seg, start.epoch)
    mismatch = start_segment_mismatch(start, header)
    if mismatch is not None:
        raise CorruptionError(seg.path, mismatch[0], f"does not match START: {mismatch[1]}")
    return header


def write_start(fs: FileSystem, wal_dir: str, start: LogStart) -> None:
    """Replace ``wal_dir``'s START with ``start``, atomically and durably (module docstring)."""
    if start.seq < START_MIN_SEQ or start.first_lsn < 1 or start.epoch == 0:
        raise ValueError(f"not a valid START: {start[:4]}")
    if len(start.anchor) > MAX_PAYLOAD:
        raise ValueError(f"anchor of {len(start.anchor)} bytes is over {MAX_PAYLOAD}")
    atomic_write(fs, start_path(wal_dir), pack_start(start))
