"""The two checks recovery makes with the durability hint in ``LOCK`` (docs/format.md §8.1).

* A log that ends before the hint's durable LSN has lost durable records: a last segment cut
  at a record boundary, or a torn final record that was synced. Refused by default, reported
  by the salvage modes.
* A poisoned hint (a sync failed) makes the next open cut the records after its durable LSN,
  and makes another handle that takes the lock stop: the page cache may show those records
  while the disk never gets them, so nothing acknowledged may be built on them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.bytesutil import Span, read_bytes, record_spans, segment_paths, snapshot, truncate_at
from tests.simfs import SimFileSystem
from wfstate.errors import CorruptionError, StorePoisonedError
from wfstate.format import HINT_SIZE, LOCK_FILE, pack_hint, read_hint
from wfstate.wal import Log, RecoveryMode

PAYLOADS = [os.urandom(0) + bytes([i]) * (50 + i) for i in range(6)]
WAL = "/wal"


def written(wal: Path) -> int:
    """A log of PAYLOADS (durability ``always``: the hint names LSN 6); its epoch."""
    with Log.open(str(wal)) as log:
        for p in PAYLOADS:
            log.append(p)
        return log.epoch


def hint_of(wal: Path, epoch: int) -> tuple[int, bool] | None:
    hint = read_hint(read_bytes(wal / LOCK_FILE)[:HINT_SIZE], epoch)
    return None if hint is None else (hint.durable_lsn, hint.poisoned)


def sim_hint(fs: SimFileSystem, epoch: int) -> tuple[int, bool] | None:
    handle = fs.open_lock(f"{WAL}/{LOCK_FILE}")
    try:
        hint = read_hint(fs.read_lock_data(handle, HINT_SIZE), epoch)
    finally:
        fs.close_lock(handle)
    return None if hint is None else (hint.durable_lsn, hint.poisoned)


# -- durable records missing --------------------------------------------------------------------
def cut_before_the_last_record(wal: Path) -> tuple[int, str, Span]:
    """:func:`written`, then its segment cut where LSN 5 ends (a clean end: by the log alone
    it reads as a shorter log); the epoch, the segment and the record cut off."""
    epoch = written(wal)
    (seg,) = segment_paths(wal)
    last = record_spans(read_bytes(seg))[-1]
    truncate_at(seg, last.offset)
    return epoch, seg, last


@pytest.mark.parametrize("mode", ["tolerate_torn_tail", "absolute"])
def test_a_segment_cut_at_a_record_boundary_is_refused_while_the_hint_names_the_lost_records(
    tmp_path: Path, mode: RecoveryMode
) -> None:
    wal = tmp_path / "wal"
    epoch, seg, last = cut_before_the_last_record(wal)
    before = snapshot(wal)
    with pytest.raises(CorruptionError) as raised:
        Log.open(str(wal), mode=mode)
    assert (raised.value.path, raised.value.offset) == (seg, last.offset)
    assert "durable records are missing" in raised.value.reason
    assert snapshot(wal) == before  # refused: nothing changed, the hint kept for the next try
    assert hint_of(wal, epoch) == (6, False)


@pytest.mark.parametrize("mode", ["point_in_time", "skip_corrupted"])
def test_the_salvage_modes_report_missing_durable_records_and_go_on(
    tmp_path: Path, mode: RecoveryMode
) -> None:
    wal = tmp_path / "wal"
    epoch, seg, last = cut_before_the_last_record(wal)
    with Log.open(str(wal), mode=mode) as log:
        assert [(d.kind, d.path, d.offset, d.length) for d in log.recovery] == [
            ("corruption", seg, last.offset, 0)
        ]
        assert [r.payload for r in log.read()] == PAYLOADS[:5]
    assert hint_of(wal, epoch) == (5, False)  # rewritten: the default mode opens it again
    with Log.open(str(wal)) as log:
        assert log.recovery == []


def test_a_torn_final_record_that_was_durable_is_corruption_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    wal = tmp_path / "wal"
    written(wal)
    (seg,) = segment_paths(wal)
    truncate_at(seg, os.path.getsize(seg) - 3)  # would read as a torn tail by the log alone
    with pytest.raises(CorruptionError, match="durable records are missing"):
        Log.open(str(wal))


def test_without_the_hint_the_cut_reads_as_a_shorter_log(tmp_path: Path) -> None:
    """The documented limit (docs/guarantees.md): the hint is never synced, so a reboot may
    take it, and a cut at a record boundary is then a valid end of the log (format §3.1)."""
    wal = tmp_path / "wal"
    written(wal)
    (seg,) = segment_paths(wal)
    truncate_at(seg, record_spans(read_bytes(seg))[-1].offset)
    (wal / LOCK_FILE).write_bytes(b"")
    with Log.open(str(wal)) as log:
        assert log.recovery == []
        assert [r.payload for r in log.read()] == PAYLOADS[:5]


def test_a_hint_of_another_epoch_is_not_checked(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    epoch = written(wal)
    (wal / LOCK_FILE).write_bytes(pack_hint(epoch ^ 1, 1000))
    with Log.open(str(wal)) as log:
        assert log.last_lsn == 6


# -- poisoned hint ------------------------------------------------------------------------------
def test_a_failed_sync_leaves_a_poisoned_hint_at_the_last_durable_lsn() -> None:
    fs = SimFileSystem()
    log = Log.open(WAL, fs=fs)
    for p in PAYLOADS[:3]:
        log.append(p)
    fs.inject("fdatasync", 1)
    with pytest.raises(StorePoisonedError):
        log.append(PAYLOADS[3])
    log.close()
    assert sim_hint(fs, log.epoch) == (3, True)


def test_a_reopen_in_the_same_boot_cuts_what_the_failed_sync_did_not_cover() -> None:
    """The page cache still shows LSN 4 after its sync failed; the disk may never get it (the
    simulator drops it, as Linux may). Building LSN 4' on top of it would lose 4' with it."""
    fs = SimFileSystem()
    log = Log.open(WAL, fs=fs)
    for p in PAYLOADS[:3]:
        log.append(p)
    fs.inject("fdatasync", 1)
    with pytest.raises(StorePoisonedError):
        log.append(b"never acknowledged")
    log.close()
    with Log.open(WAL, fs=fs) as reopened:
        (cut,) = reopened.recovery
        assert cut.kind == "torn_tail"
        assert "sync that failed" in cut.reason
        assert fs.exists(f"{cut.path}.broken-{cut.offset}")  # the bytes are kept as evidence
        assert reopened.append(b"acknowledged") == 4
        acknowledged_at = fs.op_count
        assert sim_hint(fs, reopened.epoch) == (4, False)  # the open rewrote it, then LSN 4
    for label, disk in fs.crash_states(acknowledged_at):  # everything was synced: one state
        with Log.open(WAL, fs=disk) as after:
            payloads = [r.payload for r in after.read()]
        assert payloads == [*PAYLOADS[:3], b"acknowledged"], label


def test_another_handle_stops_at_a_poisoned_hint_and_a_reopen_recovers(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    epoch = written(wal)
    with Log.open(str(wal)) as other:
        # what a handle whose sync of LSNs 5..6 failed leaves while it gives up the lock
        (wal / LOCK_FILE).write_bytes(pack_hint(epoch, 4, poisoned=True))
        with pytest.raises(StorePoisonedError, match="another handle"):
            other.append(b"x")
        with pytest.raises(StorePoisonedError):
            other.append(b"y")  # stays stopped
    with Log.open(str(wal)) as reopened:
        assert [d.kind for d in reopened.recovery] == ["torn_tail"]
        assert [r.payload for r in reopened.read()] == PAYLOADS[:4]
        assert reopened.append(b"x") == 5
    assert hint_of(wal, epoch) == (5, False)


def rotated_log(wal: Path) -> tuple[int, list[str], int]:
    """A log of 8 incompressible records over several 4 KiB segments: its epoch, segment
    paths and the first LSN of its last segment."""
    with Log.open(str(wal), segment_size=4096) as log:
        for i in range(8):
            log.append(random.Random(i).randbytes(1500))  # incompressible: 2 per segment
        epoch = log.epoch
    segs = segment_paths(wal)
    assert len(segs) >= 3
    return epoch, segs, int(os.path.basename(segs[-1]).split("-")[1].split(".")[0], 16)


def test_a_poisoned_hint_inside_the_last_segment_cuts_only_its_later_records(
    tmp_path: Path,
) -> None:
    wal = tmp_path / "wal"
    epoch, segs, first_of_last = rotated_log(wal)
    (wal / LOCK_FILE).write_bytes(pack_hint(epoch, first_of_last, poisoned=True))
    with Log.open(str(wal), segment_size=4096) as log:
        assert [r.lsn for r in log.read()] == list(range(1, first_of_last + 1))
        (cut,) = log.recovery
        assert (cut.kind, cut.path) == ("torn_tail", segs[-1])


def test_a_segment_begun_after_a_poisoned_hint_is_set_aside_whole(tmp_path: Path) -> None:
    """A rotation syncs the full segment, then creates the next one; when a sync fails after
    that, even the new segment's header may never reach the disk, so the whole segment is set
    aside (kept as evidence) and appends go on from its predecessor, which is durable."""
    wal = tmp_path / "wal"
    epoch, segs, first_of_last = rotated_log(wal)
    (wal / LOCK_FILE).write_bytes(pack_hint(epoch, first_of_last - 1, poisoned=True))
    with Log.open(str(wal), segment_size=4096) as log:
        assert [r.lsn for r in log.read()] == list(range(1, first_of_last))
        (aside,) = log.recovery
        assert (aside.kind, aside.path, aside.offset) == ("torn_segment", segs[-1], 0)
        assert log.append(b"next") == first_of_last
    assert os.path.exists(segs[-1] + ".broken-0")
    with Log.open(str(wal), segment_size=4096) as log:
        assert log.recovery == []
        assert [r.lsn for r in log.read()][-1] == first_of_last


def test_the_first_segment_is_never_set_aside_by_a_poisoned_hint(tmp_path: Path) -> None:
    """Its header was synced when the log was made: only its records after the hint go."""
    wal = tmp_path / "wal"
    epoch = written(wal)
    (wal / LOCK_FILE).write_bytes(pack_hint(epoch, 0, poisoned=True))
    with Log.open(str(wal)) as log:
        assert [d.kind for d in log.recovery] == ["torn_tail"]
        assert log.epoch == epoch
        assert list(log.read()) == []


def test_a_failed_segment_creation_leaves_a_poisoned_hint_and_the_reopen_sets_it_aside() -> None:
    """The rotation synced the full segment, then the new segment's header sync failed: the
    page cache shows a valid header the disk may never get. Appending into it in the same boot
    would put acknowledged records behind a header that vanishes with a power cut."""
    fs = SimFileSystem()
    log = Log.open(WAL, fs=fs, segment_size=4096)
    lsn = 0
    while len([n for n in fs.listdir(WAL) if n.endswith(".wal")]) == 1:
        fs.inject("fsync", 1)  # the next file fsync is the new segment's header
        try:
            lsn = log.append(random.Random(lsn).randbytes(1500))
        except StorePoisonedError:
            break
    assert log.poisoned
    log.close()
    assert sim_hint(fs, log.epoch) == (lsn, True)
    with Log.open(WAL, fs=fs, segment_size=4096) as reopened:
        assert [d.kind for d in reopened.recovery] == ["torn_segment"]
        assert reopened.append(b"acknowledged") == lsn + 1
        acknowledged_at = fs.op_count
    for label, disk in fs.crash_states(acknowledged_at):
        with Log.open(WAL, fs=disk, segment_size=4096) as after:
            assert [r.lsn for r in after.read()][-1] == lsn + 1, label
