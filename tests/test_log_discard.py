"""The log start (``wal/START``) and discarding segments (docs/format.md §2.2): starting a
segment on demand, ``discard_before``, reading and recovering a log with a START, the strict
START rules, leftovers of an interrupted discard, other handles following a discard, and the
crash simulator over a discard."""

from __future__ import annotations

import os
import random
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fixtures.golden import V1_DIR
from tests.bytesutil import read_bytes, reseal_header, segment_paths, snapshot, write_bytes
from tests.fsdoubles import RecordingFS
from tests.simfs import FsyncDir, Replace, SimFileSystem
from wfstate.errors import (
    CorruptionError,
    FormatVersionError,
    NotFoundError,
    StorePoisonedError,
    ValidationError,
)
from wfstate.format import (
    FORMAT_VERSION,
    LogStart,
    SegmentHeader,
    pack_segment_header,
    pack_start,
    parse_segment_name,
    segment_name,
)
from wfstate.fs import OS_FS, OsFileSystem
from wfstate.wal import Compression, Log, LogScan, Record, RecoveryMode, list_segments
from wfstate.wal.index import RecordIndex
from wfstate.wal.segment import SegmentFile
from wfstate.wal.start import read_start

ANCHOR = b"anchor: the state before the discard"


def payload(i: int) -> bytes:
    return random.Random(i).randbytes(400)  # incompressible: ~9 records per 4 KiB segment


def open_log(wal: str, **options: object) -> Log:
    return Log.open(wal, segment_size=4096, **options)  # type: ignore[arg-type]


def append_many(log: Log, first: int, count: int) -> list[int]:
    return [log.append(payload(i)) for i in range(first, first + count)]


def start_new_segment(log: Log, marker: bytes = b"DISCARD marker") -> int:
    """What a store does before a discard: the marker record begins a fresh segment."""
    with log.writing() as w:
        w.start_segment()
        lsn = w.enqueue(marker)
    log.wait(lsn)
    return lsn


def records(log: Log, from_lsn: int = 1) -> list[tuple[int, bytes]]:
    return [(r.lsn, r.payload) for r in log.read(from_lsn)]


def segment_names(wal: str) -> list[str]:
    return [os.path.basename(p) for p in segment_paths(wal)]


def first_lsns(wal: str) -> list[int]:
    out = []
    for name in segment_names(wal):
        parsed = parse_segment_name(name)
        assert parsed is not None
        out.append(parsed[1])
    return out


@dataclass
class Discarded:
    """A log on disk whose beginning was discarded, and what it should read as."""

    wal: str
    discard_lsn: int
    expected: list[tuple[int, bytes]]  # the records from the discard point on
    old_segments: dict[str, bytes]  # name -> bytes of the segments discarded
    epoch: int


def make_discarded(tmp_path: Path) -> Discarded:
    wal = str(tmp_path / "wal")
    written: dict[int, bytes] = {}
    with open_log(wal) as log:
        for lsn, i in zip(append_many(log, 0, 20), range(20), strict=True):
            written[lsn] = payload(i)
        old = {os.path.basename(p): read_bytes(p) for p in segment_paths(wal)}
        d = start_new_segment(log)
        written[d] = b"DISCARD marker"
        log.discard_before(d, ANCHOR)
        for lsn, i in zip(append_many(log, 100, 5), range(100, 105), strict=True):
            written[lsn] = payload(i)
        epoch = log.epoch
    expected = [(lsn, p) for lsn, p in sorted(written.items()) if lsn >= d]
    return Discarded(wal, d, expected, old, epoch)


# -- start_segment -------------------------------------------------------------------------------
@pytest.mark.parametrize("durability", ["always", "none"])
def test_start_segment_makes_the_next_record_the_first_of_a_new_segment(
    tmp_path: Path, durability: str
) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal, durability=durability) as log:
        append_many(log, 0, 3)
        with log.writing() as w:
            a = w.enqueue(b"a")
            w.start_segment()
            b = w.enqueue(b"b")  # queued in the same group commit as a
            c = w.enqueue(b"c")
        log.wait(c)
        assert (a, b, c) == (4, 5, 6)
        assert first_lsns(wal) == [1, 5]
        assert records(log, 4) == [(4, b"a"), (5, b"b"), (6, b"c")]
        # the segment left was synced, as at a size-based rotation
        assert log.durable_lsn == (6 if durability == "always" else 4)
    with Log.open(wal) as log:
        assert [lsn for lsn, _ in records(log)] == list(range(1, 7))


def test_start_segment_creates_nothing_until_a_record_follows(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as log:
        with log.writing() as w:
            w.start_segment()  # an empty segment 1: the next record begins it as it is
            w.enqueue(b"first")
        assert first_lsns(wal) == [1]
        with log.writing() as w:
            w.start_segment()  # nothing enqueued after it in this block
        log.append(b"second")
        assert first_lsns(wal) == [1]  # and it does not carry over to a later block


def test_a_size_rotated_segment_can_be_discarded_before_too(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as log:
        append_many(log, 0, 30)
        third = first_lsns(wal)[2]
        log.discard_before(third, ANCHOR)
        assert log.first_lsn == third
        assert [lsn for lsn, _ in records(log)] == list(range(third, 31))
        assert first_lsns(wal)[0] == third


# -- discard_before on the handle that discards, and reopening ----------------------------------
def test_discard_then_reopen_reads_exactly_the_records_from_the_discard_point(
    tmp_path: Path,
) -> None:
    d = make_discarded(tmp_path)
    assert sorted(os.listdir(d.wal)) == sorted([*segment_names(d.wal), "LOCK", "START"])
    assert first_lsns(d.wal)[0] == d.discard_lsn
    assert not set(d.old_segments) & set(os.listdir(d.wal))
    with Log.open(d.wal) as log:
        assert (log.first_lsn, log.anchor, log.epoch) == (d.discard_lsn, ANCHOR, d.epoch)
        assert records(log) == d.expected
        assert records(log, 1) == d.expected  # below the first LSN: from the first LSN
        assert records(log, d.discard_lsn + 2) == d.expected[2:]
        assert log.read_at(d.discard_lsn) == Record(d.discard_lsn, 1, b"DISCARD marker")
        for lsn in (1, d.discard_lsn - 1):
            with pytest.raises(NotFoundError):
                log.read_at(lsn)
        last = log.last_lsn
        assert log.append(b"after reopen") == last + 1
    with Log.open(d.wal, mode="absolute") as log:
        assert records(log) == [*d.expected, (last + 1, b"after reopen")]
    scan = LogScan(OS_FS, d.wal)
    assert [(r.lsn, r.payload) for r in scan.records()] == [
        *d.expected,
        (last + 1, b"after reopen"),
    ]
    assert scan.first_lsn == d.discard_lsn


def test_the_discarding_handle_forgets_the_records_it_discarded(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as log:
        append_many(log, 0, 20)
        assert log.read_at(3).payload == payload(2)
        assert (log.first_lsn, log.anchor) == (1, b"")
        d = start_new_segment(log)
        log.discard_before(d, ANCHOR)
        assert (log.first_lsn, log.anchor) == (d, ANCHOR)
        with pytest.raises(NotFoundError):
            log.read_at(3)
        assert log.read_at(d).payload == b"DISCARD marker"
        assert [lsn for lsn, _ in records(log)] == [d]
        assert log.append(b"next") == d + 1


@pytest.mark.parametrize(
    "mode", ["tolerate_torn_tail", "absolute", "point_in_time", "skip_corrupted"]
)
def test_every_recovery_mode_reads_a_discarded_log_from_start(
    tmp_path: Path, mode: RecoveryMode
) -> None:
    d = make_discarded(tmp_path)
    with Log.open(d.wal, mode=mode) as log:
        assert log.recovery == []
        assert (log.first_lsn, log.anchor) == (d.discard_lsn, ANCHOR)
        assert records(log) == d.expected


def test_discarding_again_at_the_same_lsn_only_rewrites_the_anchor(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    names = segment_names(d.wal)
    with Log.open(d.wal) as log:
        log.discard_before(d.discard_lsn, b"another anchor")
        assert (log.first_lsn, log.anchor) == (d.discard_lsn, b"another anchor")
        assert records(log) == d.expected
    assert segment_names(d.wal) == names
    with Log.open(d.wal) as log:
        assert log.anchor == b"another anchor"
        log.discard_before(d.discard_lsn, b"")  # an empty anchor is an anchor
        assert log.anchor == b""
    with Log.open(d.wal) as log:
        assert (log.first_lsn, log.anchor) == (d.discard_lsn, b"")


def test_a_later_discard_moves_the_start_again(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    with open_log(d.wal) as log:
        append_many(log, 200, 12)
        second = start_new_segment(log)
        log.discard_before(second, b"second anchor")
        expected = records(log)
    assert first_lsns(d.wal)[0] == second
    with Log.open(d.wal) as log:
        assert (log.first_lsn, log.anchor) == (second, b"second anchor")
        assert records(log) == expected
        with pytest.raises(ValidationError):
            log.discard_before(d.discard_lsn, ANCHOR)  # no longer part of the log


def test_discard_makes_the_records_before_it_durable_first(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    fs = RecordingFS()
    with open_log(wal, durability="none", fs=fs) as log:
        append_many(log, 0, 12)
        d = start_new_segment(log)
        assert log.durable_lsn < d  # under "none" nothing forced a sync of the new segment
        syncs = fs.count("fdatasync") + fs.count("fsync")
        log.discard_before(d, ANCHOR)
        assert log.durable_lsn == log.last_lsn == d
        assert fs.count("fdatasync") + fs.count("fsync") > syncs


@pytest.mark.parametrize(
    ("lsn", "why"),
    [(1, "segment 1"), (4, "inside a segment"), (10_000, "past the end")],
)
def test_discard_before_refuses_an_lsn_that_starts_no_later_segment(
    tmp_path: Path, lsn: int, why: str
) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as log:
        append_many(log, 0, 20)
        before = snapshot(wal)
        with pytest.raises(ValidationError) as raised:
            log.discard_before(lsn, ANCHOR)
        assert raised.value.field == "lsn", why
        assert snapshot(wal) == before
        assert log.first_lsn == 1
        assert log.append(b"still usable") == 21


def test_discard_before_validates_its_arguments(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as log:
        append_many(log, 0, 12)
        d = start_new_segment(log)
        for bad_lsn in (0, -1, "5", True):
            with pytest.raises(ValidationError) as raised:
                log.discard_before(bad_lsn, ANCHOR)  # type: ignore[arg-type]
            assert raised.value.field == "lsn"
        with pytest.raises(ValidationError) as raised:
            log.discard_before(d, "text")  # type: ignore[arg-type]
        assert raised.value.field == "anchor"
    assert "START" not in os.listdir(wal)


def test_a_failed_start_write_poisons_the_log(tmp_path: Path) -> None:
    fs = SimFileSystem()
    wal = "/store/wal"
    log = open_log(wal, fs=fs)
    append_many(log, 0, 12)
    d = start_new_segment(log)
    fs.inject("fsync", 1)  # the sync of the temp file: it never becomes START
    with pytest.raises(StorePoisonedError):
        log.discard_before(d, ANCHOR)
    with pytest.raises(StorePoisonedError):
        log.append(b"after")
    log.close()
    assert [n for n in fs.listdir(wal) if n.endswith(".tmp")] == []  # the temp file removed
    with Log.open(wal, fs=fs) as again:  # nothing discarded: the temp file never got renamed
        assert again.first_lsn == 1
        assert [r.lsn for r in again.read()] == list(range(1, d + 1))
        fs.inject("fsync_dir", 1)  # the directory sync after the rename of START
        with pytest.raises(StorePoisonedError):
            again.discard_before(d, ANCHOR)
        assert again.poisoned
    with Log.open(wal, fs=fs) as third:  # renamed, so committed (on this disk)
        assert (third.first_lsn, third.anchor) == (d, ANCHOR)
        assert [r.lsn for r in third.read()] == [d]


def test_a_v1_log_can_be_discarded_and_read_on(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    shutil.copytree(V1_DIR / "wal", wal)
    with Log.open(wal) as log:
        log.discard_before(6, ANCHOR)  # segment 2 of the committed version-1 log
        assert [r.lsn for r in log.read()] == [6, 7]
    with Log.open(wal, mode="absolute") as log:
        assert (log.first_lsn, log.anchor) == (6, ANCHOR)
        assert [r.lsn for r in log.read()] == [6, 7]


# -- START is read strictly --------------------------------------------------------------------
def start_file(wal: str) -> str:
    return os.path.join(wal, "START")


def expect_refused(wal: str, error: type[Exception] = CorruptionError) -> Exception:
    """Opening (every mode) and scanning refuse the log, and nothing is changed."""
    before = snapshot(wal)
    for mode in ("tolerate_torn_tail", "absolute", "point_in_time", "skip_corrupted"):
        with pytest.raises(error) as raised:
            Log.open(wal, mode=mode)
        assert snapshot(wal) == before, mode
    with pytest.raises(error):
        list(LogScan(OS_FS, wal).records())
    with pytest.raises(error):
        list_segments(OS_FS, wal)
    return raised.value


def test_every_flipped_byte_of_start_is_detected(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    good = read_bytes(start_file(d.wal))
    assert len(good) == 64 + len(ANCHOR)
    before = snapshot(d.wal)
    for i in range(len(good)):
        damaged = bytearray(good)
        damaged[i] ^= 0x5A
        write_bytes(start_file(d.wal), bytes(damaged))
        with pytest.raises(CorruptionError) as raised:
            Log.open(d.wal)
        assert raised.value.path == start_file(d.wal), i
        with pytest.raises(CorruptionError):
            list(LogScan(OS_FS, d.wal).records())
    write_bytes(start_file(d.wal), good)
    assert snapshot(d.wal) == before
    with Log.open(d.wal) as log:
        assert records(log) == d.expected


def test_a_damaged_start_is_refused_by_every_mode_and_nothing_changes(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    good = read_bytes(start_file(d.wal))
    write_bytes(start_file(d.wal), good[:-1])  # short by one anchor byte
    expect_refused(d.wal)
    write_bytes(start_file(d.wal), good + b"\x00")  # one byte too many
    expect_refused(d.wal)
    write_bytes(start_file(d.wal), good[:40])  # shorter than a header
    expect_refused(d.wal)
    write_bytes(start_file(d.wal), b"")
    expect_refused(d.wal)


def restart_with(d: Discarded, **fields: Any) -> None:
    """Replace START by one whose checksums are right but whose ``fields`` are as given."""
    start = read_start(OS_FS, d.wal)
    assert start is not None
    write_bytes(start_file(d.wal), pack_start(start._replace(**fields)))


def test_start_naming_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    os.unlink(segment_paths(d.wal)[0])
    before = snapshot(d.wal)
    for mode in ("tolerate_torn_tail", "absolute"):
        with pytest.raises(CorruptionError) as raised:
            Log.open(d.wal, mode=mode)
        assert raised.value.path == start_file(d.wal)
        assert snapshot(d.wal) == before
    with pytest.raises(CorruptionError):
        list(LogScan(OS_FS, d.wal).records())
    # point_in_time ends the log before the gap: nothing is left, so it begins again at START
    with Log.open(d.wal, mode="point_in_time") as log:
        assert (log.first_lsn, log.anchor, records(log)) == (d.discard_lsn, ANCHOR, [])


def test_start_naming_a_later_segment_than_exists_is_corruption(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    parsed = parse_segment_name(segment_names(d.wal)[-1])
    assert parsed is not None
    restart_with(d, seq=parsed[0] + 1, first_lsn=10_000)
    with pytest.raises(CorruptionError) as raised:
        Log.open(d.wal)
    assert raised.value.path == start_file(d.wal)


@pytest.mark.parametrize(
    ("field", "value"),
    [("prev_checksum", 12345), ("epoch", 0xBAD), ("first_lsn", 3)],
)
def test_start_disagreeing_with_its_segment_is_corruption(
    tmp_path: Path, field: str, value: int
) -> None:
    d = make_discarded(tmp_path)
    restart_with(d, **{field: value})
    before = snapshot(d.wal)
    for mode in ("tolerate_torn_tail", "absolute"):
        with pytest.raises(CorruptionError):
            Log.open(d.wal, mode=mode)
    with pytest.raises(CorruptionError):
        list(LogScan(OS_FS, d.wal).records())
    assert snapshot(d.wal) == before


@pytest.mark.parametrize(("field", "value"), [("seq", 1), ("epoch", 0), ("first_lsn", 0)])
def test_start_fields_out_of_range_are_corruption(tmp_path: Path, field: str, value: int) -> None:
    d = make_discarded(tmp_path)
    restart_with(d, **{field: value})  # seq 1: segment 1 is the log without a START
    expect_refused(d.wal)


def test_start_of_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    data = bytearray(read_bytes(start_file(d.wal)))
    struct.pack_into("<H", data, 8, FORMAT_VERSION + 1)
    write_bytes(start_file(d.wal), reseal_header(bytes(data)))
    error = expect_refused(d.wal, FormatVersionError)
    assert isinstance(error, FormatVersionError)
    assert (error.found, error.supported) == (FORMAT_VERSION + 1, FORMAT_VERSION)
    struct.pack_into("<H", data, 8, 1)  # version 1 has no START
    write_bytes(start_file(d.wal), reseal_header(bytes(data)))
    expect_refused(d.wal)


# -- leftovers of an interrupted discard -------------------------------------------------------
def test_leftover_segments_before_start_are_ignored_then_deleted_by_the_next_open(
    tmp_path: Path,
) -> None:
    d = make_discarded(tmp_path)
    for name, data in d.old_segments.items():  # a crash after the rename, before the unlinks
        write_bytes(os.path.join(d.wal, name), data)
    assert list_segments(OS_FS, d.wal)[0].first_lsn == d.discard_lsn
    scan = LogScan(OS_FS, d.wal)
    assert [(r.lsn, r.payload) for r in scan.records()] == d.expected  # read-only: ignored
    assert set(d.old_segments) <= set(os.listdir(d.wal))
    with Log.open(d.wal) as log:
        assert records(log) == d.expected
        assert log.recovery == []
    assert not set(d.old_segments) & set(os.listdir(d.wal))


def test_a_leftover_segment_is_never_read_even_when_its_successor_is_gone(
    tmp_path: Path,
) -> None:
    d = make_discarded(tmp_path)
    first_name = sorted(d.old_segments)[0]
    write_bytes(os.path.join(d.wal, first_name), d.old_segments[first_name])  # just segment 1
    with Log.open(d.wal, mode="absolute") as log:
        assert records(log) == d.expected
    assert first_name not in os.listdir(d.wal)


@pytest.mark.parametrize("mode", ["point_in_time", "skip_corrupted"])
def test_salvage_modes_begin_again_at_start_when_starts_segment_is_unreadable(
    tmp_path: Path, mode: RecoveryMode
) -> None:
    d = make_discarded(tmp_path)
    for name, data in d.old_segments.items():  # leftovers, which must stay discarded
        write_bytes(os.path.join(d.wal, name), data)
    first = segment_paths(d.wal)[len(d.old_segments)]
    header = bytearray(read_bytes(first))
    header[20] ^= 0xFF  # START's segment header: nothing from START on can be verified
    write_bytes(first, bytes(header))
    with pytest.raises(CorruptionError):
        Log.open(d.wal)
    with Log.open(d.wal, mode=mode) as log:
        # the bad header, then what it cost: the LOCK hint names records now missing
        assert [x.kind for x in log.recovery] == ["corruption", "corruption"]
        assert "durable records are missing" in log.recovery[1].reason
        assert (log.first_lsn, log.anchor) == (d.discard_lsn, ANCHOR)
        assert records(log) == []
        assert log.append(b"begun again") == d.discard_lsn  # LSNs go on from START, not 1
    assert not set(d.old_segments) & set(os.listdir(d.wal))
    assert os.path.basename(first) in os.listdir(os.path.join(d.wal, "quarantine"))
    with Log.open(d.wal, mode="absolute") as log:
        assert records(log) == [(d.discard_lsn, b"begun again")]


class DiscardMidway(OsFileSystem):
    """The real file system, running ``hook`` (another process's discard) once, just before
    the first call of ``method`` on a path ending in ``suffix``."""

    def __init__(self, method: str, suffix: str, hook: Callable[[], None]) -> None:
        self._method, self._suffix, self._hook = method, suffix, hook

    def _maybe(self, method: str, path: str) -> None:
        if method == self._method and path.endswith(self._suffix) and self._hook is not None:
            hook, self._hook = self._hook, None  # type: ignore[assignment]
            hook()

    def listdir(self, path: str) -> list[str]:
        self._maybe("listdir", path)
        return super().listdir(path)

    def read_file(self, path: str) -> bytes:
        self._maybe("read_file", path)
        return super().read_file(path)


def test_a_reader_listing_during_a_discard_never_sees_a_missing_segment(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as a:
        append_many(a, 0, 20)
        d = start_new_segment(a)
        # the discard lands between the reader's listing and its reading of START
        fs = DiscardMidway("listdir", "wal", lambda: a.discard_before(d, ANCHOR))
        scan = LogScan(fs, wal)
        assert [r.lsn for r in scan.records()] == [d]
        assert scan.first_lsn == d


def test_a_reader_whose_segment_is_discarded_while_it_reads_is_told_so(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as a:
        append_many(a, 0, 20)
        d = start_new_segment(a)
        fs = DiscardMidway("read_file", ".wal", lambda: a.discard_before(d, ANCHOR))
        scan = LogScan(fs, wal)  # listed and read START before the discard
        with pytest.raises(NotFoundError):
            list(scan.records())


def test_the_record_index_forgets_exactly_the_records_before_a_point() -> None:
    index = RecordIndex()
    one, two = (SegmentFile(f"s{i}", f"/wal/s{i}", i, 1) for i in (1, 2))
    for lsn in range(1, 6):
        index.add(one, lsn, 64 * lsn, 64, lsn)
    for lsn in range(6, 9):
        index.add(two, lsn, 64 * lsn, 64, lsn)
    index.drop_before(4)  # within the first span
    assert [index.locate(lsn) is None for lsn in range(1, 9)] == [True] * 3 + [False] * 5
    assert index.locate(4) == ("/wal/s1", 256, 64, 4)
    assert index.locate(7) == ("/wal/s2", 448, 64, 7)
    index.drop_before(6)
    assert index.locate(5) is None and index.locate(6) == ("/wal/s2", 384, 64, 6)
    index.add(two, 9, 576, 64, 9)
    assert index.locate(9) == ("/wal/s2", 576, 64, 9)


# -- other handles -----------------------------------------------------------------------------
class Events:
    """``on_foreign`` and ``on_discard`` of one handle, in the order they were called."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bytes]] = []

    def foreign(self, record: Record) -> None:
        self.seen.append(("record", record.lsn, record.payload))

    def discard(self, anchor: bytes, first_lsn: int) -> None:
        self.seen.append(("discard", first_lsn, anchor))

    def options(self) -> dict[str, Callable[..., None]]:
        return {"on_foreign": self.foreign, "on_discard": self.discard}


@pytest.mark.parametrize("how", ["follow", "append"])
def test_a_handle_whose_segment_was_discarded_continues_from_start(
    tmp_path: Path, how: str
) -> None:
    wal = str(tmp_path / "wal")
    events = Events()
    with open_log(wal) as a, open_log(wal, **events.options()) as b:
        append_many(a, 0, 4)
        b.follow()  # b's view ends in segment 1, at LSN 4
        events.seen.clear()
        append_many(a, 4, 20)  # segment 1 fills up, then two more
        d = start_new_segment(a)
        a.discard_before(d, ANCHOR)
        after = append_many(a, 50, 3)
        with pytest.raises(NotFoundError):  # b's view holds records that are gone
            list(b.read())
        with pytest.raises(NotFoundError):
            b.read_at(2)
        if how == "follow":
            b.follow()
        else:
            assert b.append(b"from b") == after[-1] + 1
        assert events.seen[0] == ("discard", d, ANCHOR)  # the anchor first...
        assert [e[1] for e in events.seen[1:]] == [d, *after]  # ...then the records from d on
        assert events.seen[1][2] == b"DISCARD marker"
        assert (b.first_lsn, b.anchor) == (d, ANCHOR)
        with pytest.raises(NotFoundError):
            b.read_at(2)  # forgotten by b too
        assert b.read_at(d).payload == b"DISCARD marker"
        lsn = b.append(b"b writes on")
        assert [r.lsn for r in b.read()] == list(range(d, lsn + 1))
        a.follow()
        assert a.last_lsn == lsn
    with Log.open(wal) as log:
        assert [r.lsn for r in log.read()] == list(range(d, lsn + 1))


def test_a_handle_at_the_end_of_a_discarded_segment_gets_the_anchor_then_everything(
    tmp_path: Path,
) -> None:
    wal = str(tmp_path / "wal")
    events = Events()
    with open_log(wal) as a, open_log(wal, **events.options()) as b:
        append_many(a, 0, 5)
        b.follow()
        events.seen.clear()
        d = start_new_segment(a)  # b's view ends exactly where the new segment begins
        a.discard_before(d, ANCHOR)
        b.follow()
        assert events.seen == [("discard", d, ANCHOR), ("record", d, b"DISCARD marker")]


def test_a_handle_whose_segment_is_still_there_goes_on_without_the_anchor(
    tmp_path: Path,
) -> None:
    wal = str(tmp_path / "wal")
    events = Events()
    with open_log(wal) as a, open_log(wal, **events.options()) as b:
        append_many(a, 0, 12)
        d = start_new_segment(a)
        append_many(a, 20, 2)
        b.follow()  # b's view is already in the segment that will be the first
        events.seen.clear()
        a.discard_before(d, ANCHOR)
        lsn = a.append(b"more")
        b.follow()
        assert events.seen == [("record", lsn, b"more")]  # its state already covers the anchor
        assert (b.first_lsn, b.anchor) == (d, ANCHOR)


def test_reading_takes_a_start_that_discards_nothing_of_the_handles_view(
    tmp_path: Path,
) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as a, open_log(wal) as b:
        append_many(a, 0, 30)
        b.follow()  # b's view ends in the last segment
        second = first_lsns(wal)[1]
        a.discard_before(second, ANCHOR)  # nothing else changes: b's follow sees no new bytes
        b.follow()
        assert [r.lsn for r in b.read()] == list(range(second, 31))
        assert (b.first_lsn, b.anchor) == (second, ANCHOR)
        with pytest.raises(NotFoundError):
            b.read_at(1)


def test_a_follower_never_reads_a_leftover_of_its_discarded_segment(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    events = Events()
    with open_log(wal) as a, open_log(wal, **events.options()) as b:
        append_many(a, 0, 3)
        b.follow()
        events.seen.clear()
        append_many(a, 3, 12)
        old = {os.path.basename(p): read_bytes(p) for p in segment_paths(wal)}
        d = start_new_segment(a)
        a.discard_before(d, ANCHOR)
        for name, data in old.items():  # as if a's process died before its unlinks
            write_bytes(os.path.join(wal, name), data)
        b.follow()
        assert events.seen == [("discard", d, ANCHOR), ("record", d, b"DISCARD marker")]


def test_a_segment_gone_without_a_start_is_corruption_not_a_skip(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as a, open_log(wal) as b:
        append_many(a, 0, 3)
        b.follow()
        append_many(a, 3, 12)
        os.unlink(segment_paths(wal)[0])  # removed by hand: no START says it was discarded
        with pytest.raises(CorruptionError, match="reopen"):
            b.follow()


def test_a_start_that_goes_away_under_a_handle_is_corruption(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    with Log.open(d.wal) as a, Log.open(d.wal) as b:
        a.append(b"x")
        os.unlink(start_file(d.wal))
        with pytest.raises(CorruptionError, match="reopen"):
            b.follow()


def test_a_start_that_moves_back_under_a_handle_is_corruption(tmp_path: Path) -> None:
    d = make_discarded(tmp_path)
    earlier = read_bytes(start_file(d.wal))
    with open_log(d.wal) as a, open_log(d.wal) as b:
        append_many(a, 300, 12)
        a.discard_before(start_new_segment(a), b"later")
        b.follow()
        assert b.anchor == b"later"
        write_bytes(start_file(d.wal), earlier)  # a START from before: the log was replaced
        a.append(b"x")
        with pytest.raises(CorruptionError, match="reopen"):
            b.follow()


def test_a_start_that_would_take_a_handle_back_to_lsns_it_read_is_corruption(
    tmp_path: Path,
) -> None:
    wal = str(tmp_path / "wal")
    with open_log(wal) as a, open_log(wal) as b:
        append_many(a, 0, 30)
        b.follow()
        last = segment_paths(wal)[-1]
        parsed = parse_segment_name(os.path.basename(last))
        assert parsed is not None
        # a consistent-looking START and segment after b's, but at an LSN b already read
        header = SegmentHeader(a.epoch, parsed[0] + 1, 5, 777)
        name = segment_name(header.seq, header.first_lsn)
        write_bytes(os.path.join(wal, name), pack_segment_header(header))
        start = LogStart(a.epoch, header.seq, 5, 777, b"replaced")
        write_bytes(start_file(wal), pack_start(start))
        a.append(b"x")  # (a follow that finds nothing new does not look at START)
        with pytest.raises(CorruptionError, match="reopen"):
            b.follow()
        assert b.last_lsn == 30


def test_an_on_discard_that_raises_poisons_the_handle(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")

    def refuse(anchor: bytes, first_lsn: int) -> None:
        raise RuntimeError("cannot take the anchor")

    with open_log(wal) as a, open_log(wal, on_discard=refuse) as b:
        append_many(a, 0, 3)
        b.follow()
        append_many(a, 3, 12)
        a.discard_before(start_new_segment(a), ANCHOR)
        with pytest.raises(RuntimeError):
            b.follow()
        assert b.poisoned


# -- the crash simulator over a discard ----------------------------------------------------------
SIM_WAL = "/store/wal"


def sim_payload(i: int) -> bytes:
    """Varied sizes so that writes tear across 512 B and 4 KiB pieces."""
    size = (37, 300, 900, 2600)[i % 4]
    return random.Random(i).randbytes(size)


@dataclass
class DiscardWorkload:
    fs: SimFileSystem
    appended: list[bytes]  # payload of LSN i + 1
    acked_at: dict[int, int]  # lsn -> op count once acknowledged
    discard_lsn: int
    start_durable_at: int  # op count once START's rename was covered by a directory fsync
    discard_returned_at: int


def run_discard_workload(
    before: int, after: int, *, follower: bool = False, fs: SimFileSystem | None = None
) -> DiscardWorkload:
    """Append ``before`` records, begin a segment with a marker record, append two more,
    discard before the marker, append ``after`` more (durability ``always``). ``follower``:
    the records after the discard are appended by a second handle opened at the start, whose
    view still ends in the first segment (it continues from START when it takes the lock)."""
    fs = fs if fs is not None else SimFileSystem()
    options: dict[str, Any] = {
        "fs": fs,
        "segment_size": 4096,
        "compression": Compression(codec="none"),
        "epoch": 0x5EED,
    }
    log = Log.open(SIM_WAL, **options)
    anchors: list[tuple[bytes, int]] = []
    other = Log.open(SIM_WAL, **options, on_discard=lambda a, n: anchors.append((a, n)))
    appended: list[bytes] = []
    acked_at: dict[int, int] = {}

    def append(data: bytes, writer: Log = log) -> None:
        appended.append(data)
        lsn = writer.append(data)
        assert lsn == len(appended)
        acked_at[lsn] = fs.op_count

    for i in range(before):
        append(sim_payload(i))
        if i == 0:
            other.follow()
    appended.append(b"DISCARD marker")
    d = start_new_segment(log)
    acked_at[d] = fs.op_count
    for i in range(100, 102):
        append(sim_payload(i))
    log.discard_before(d, ANCHOR)
    discard_returned_at = fs.op_count
    for i in range(200, 200 + after):
        append(sim_payload(i), other if follower else log)
    assert anchors == ([(ANCHOR, d)] if follower else [])
    log.close()
    other.close()
    trace = fs.trace
    renamed = next(
        i for i, op in enumerate(trace) if isinstance(op, Replace) and op.dst_name == "START"
    )
    synced = next(
        (i for i, op in enumerate(trace) if i > renamed and isinstance(op, FsyncDir)),
        len(trace),  # never (a broken disk that drops directory syncs)
    )
    return DiscardWorkload(fs, appended, acked_at, d, synced + 1, discard_returned_at)


def check_discard_state(
    w: DiscardWorkload, disk: SimFileSystem, at: int, where: str
) -> tuple[bool, list[str]]:
    """One crash state: (whether the discard is committed in it, the violations found)."""
    expected = [(i + 1, p) for i, p in enumerate(w.appended)]
    try:
        with Log.open(SIM_WAL, fs=disk) as log:
            got = [(r.lsn, r.payload) for r in log.read()]
            first, anchor = log.first_lsn, log.anchor
    except Exception as exc:
        return False, [f"{where}: recovery failed: {type(exc).__name__}: {exc}"]
    problems: list[str] = []
    committed = first == w.discard_lsn
    if committed:
        if anchor != ANCHOR:
            problems.append(f"{where}: committed discard with anchor {anchor!r}")
        if got != expected[w.discard_lsn - 1 :][: len(got)]:
            problems.append(f"{where}: not the records from the discard point, in order")
        left = [n for n in disk.listdir(SIM_WAL) if (p := parse_segment_name(n)) and p[1] < first]
        if left:
            problems.append(f"{where}: discarded segments left after open: {left}")
    elif first == 1 and anchor == b"":
        if got != expected[: len(got)]:
            problems.append(f"{where}: not a prefix of what was appended")
        if at >= w.start_durable_at:
            problems.append(f"{where}: START was durable, yet the log starts at 1")
    else:
        problems.append(f"{where}: the log starts at {first}")
    owed = [lsn for lsn, op in w.acked_at.items() if op <= at and (lsn >= first or not committed)]
    have = {lsn for lsn, _ in got}
    lost = [lsn for lsn in owed if lsn not in have]
    if lost:
        problems.append(f"{where}: acknowledged LSNs {lost} lost")
    before = disk.snapshot()
    with Log.open(SIM_WAL, fs=disk) as log:
        again = [(r.lsn, r.payload) for r in log.read()]
        if again != got or disk.snapshot() != before or log.first_lsn != first:
            problems.append(f"{where}: a second recovery changed the log")
        lsn = log.append(b"after recovery")
    with Log.open(SIM_WAL, fs=disk) as log:
        if [(r.lsn, r.payload) for r in log.read()] != [*got, (lsn, b"after recovery")]:
            problems.append(f"{where}: an append after recovery did not read back")
    return committed, problems


def explore_discard(w: DiscardWorkload) -> tuple[int, int, int, list[str]]:
    """Every crash state of every crash point: (states, committed, not committed, problems)."""
    states = committed = 0
    problems: list[str] = []
    for at in w.fs.crash_points():
        for label, disk in w.fs.crash_states(at):
            states += 1
            done, found = check_discard_state(w, disk, at, f"op {at} {label}")
            committed += done
            problems += found
    return states, committed, states - committed, problems


@pytest.mark.parametrize("follower", [False, True], ids=["one handle", "a follower writes on"])
def test_every_crash_state_of_a_discard_keeps_every_acknowledged_record_from_start(
    crash_report: list[str], follower: bool
) -> None:
    """A crash at any operation, in any state the crash model allows, of: appends, a new
    segment begun by a marker record, appends, ``discard_before`` the marker, appends (by the
    same handle, or by a second one whose view ended in a discarded segment). After
    reopening, the log starts at 1 (discard not committed: every acknowledged record is
    there) or at the marker (committed, and always once START was durable: every acknowledged
    record from the marker on is there, no discarded segment is left or read); records are
    the ones appended, in order; recovering twice changes nothing; appends go on.

    The default run explores ~600 crash states at ~220 crash points per variant, about a
    third of them with the discard committed (the figures are in the crash report printed at
    the end of the test run); it takes about a second."""
    w = run_discard_workload(before=40, after=16, follower=follower)
    assert w.discard_lsn == 41
    states, committed, uncommitted, problems = explore_discard(w)
    crash_report.append(
        f"discard_before ({'a follower writes on' if follower else 'one handle'}): "
        f"{states} crash states at {w.fs.op_count + 1} crash points "
        f"({committed} with the discard committed, {uncommitted} without); "
        f"violations {len(problems)}"
    )
    assert problems == []
    assert committed > 150 and uncommitted > 150, (committed, uncommitted)
    assert states > 500, states
    assert w.start_durable_at <= w.discard_returned_at


class NoDirSyncFS(SimFileSystem):
    """A broken disk: directory fsync returns without syncing (a rename may not last)."""

    def fsync_dir(self, path: str) -> None:
        pass


def test_the_discard_crash_check_catches_a_discard_whose_start_is_not_durable(
    crash_report: list[str],
) -> None:
    w = run_discard_workload(before=40, after=4, fs=NoDirSyncFS())
    states, _committed, _uncommitted, problems = explore_discard(w)
    crash_report.append(
        f"discard_before on a disk dropping directory syncs: caught in {len(problems)} of "
        f"{states} states"
    )
    assert problems, "the crash check must see START vanish after its segments were deleted"


@pytest.mark.slow
def test_long_crash_exploration_of_discards(crash_report: list[str]) -> None:
    for follower in (False, True):
        w = run_discard_workload(before=150, after=80, follower=follower)
        states, committed, _uncommitted, problems = explore_discard(w)
        crash_report.append(f"discard_before, long: {states} crash states ({committed} committed)")
        assert problems == []
