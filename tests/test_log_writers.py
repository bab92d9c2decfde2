"""Several writers on one log (docs/format.md §8): the writers' lock, catching up, repairing
what a writer that died holding the lock left, and the durability hint."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bytesutil import overwrite, read_bytes, record_spans, segment_paths, truncate_at
from tests.simfs import SimFileSystem
from wfstate.errors import CorruptionError, LockTimeoutError
from wfstate.format import FLAG_AFTER_SYNC, HINT_SIZE, pack_hint, unpack_hint
from wfstate.fs import OS_FS
from wfstate.wal import Compression, Log, Record, list_segments


def payload(i: int) -> bytes:
    return random.Random(i).randbytes(400)  # incompressible: predictable segment sizes


class Foreign:
    """An ``on_foreign`` callback that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __call__(self, record: Record) -> None:
        self.records.append(record)

    def lsns(self) -> list[int]:
        return [r.lsn for r in self.records]


def read_all(wal: str) -> list[tuple[int, bytes]]:
    with Log.open(wal) as log:
        return [(r.lsn, r.payload) for r in log.read()]


def test_two_handles_interleave_and_each_hands_over_the_others_records(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    seen_a, seen_b = Foreign(), Foreign()
    with Log.open(wal, on_foreign=seen_a) as a, Log.open(wal, on_foreign=seen_b) as b:
        written: dict[int, bytes] = {}
        for i in range(10):
            log = a if i % 3 else b
            written[log.append(payload(i))] = payload(i)
        a.follow()
        b.follow()
        assert sorted(written) == list(range(1, 11))
        # each handle was handed exactly the records of the other, in LSN order
        b_lsns = [lsn for lsn in written if lsn in {1, 4, 7, 10}]
        assert seen_a.lsns() == b_lsns
        assert seen_b.lsns() == [lsn for lsn in sorted(written) if lsn not in b_lsns]
        assert all(r.payload == written[r.lsn] for r in seen_a.records + seen_b.records)
        assert a.last_lsn == b.last_lsn == 10
    assert read_all(wal) == sorted(written.items())


def test_catching_up_follows_other_writers_across_rotations(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    seen = Foreign()
    with Log.open(wal, segment_size=4096) as a, Log.open(wal, on_foreign=seen) as b:
        for i in range(30):  # ~4 segments of a's records
            a.append(payload(i))
        assert len(segment_paths(wal)) >= 3
        b.follow()
        assert seen.lsns() == list(range(1, 31))
        assert b.append(b"after") == 31
    assert [lsn for lsn, _ in read_all(wal)] == list(range(1, 32))


def test_threads_of_two_handles_never_share_an_lsn(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    acked: list[int] = []
    mutex = threading.Lock()
    with Log.open(wal) as a, Log.open(wal) as b:

        def work(log: Log, k: int) -> None:
            for i in range(40):
                lsn = log.append(f"{k}:{i}".encode())
                with mutex:
                    acked.append(lsn)

        threads = [threading.Thread(target=work, args=(a if k % 2 else b, k)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(acked) == list(range(1, 161))
    records = read_all(wal)
    assert [lsn for lsn, _ in records] == list(range(1, 161))
    assert sorted(p for _, p in records) == sorted(
        f"{k}:{i}".encode() for k in range(4) for i in range(40)
    )


def test_the_next_writer_cuts_the_torn_record_of_a_writer_that_died(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as a, Log.open(wal) as b:
        a.append(payload(1))
        seg = segment_paths(wal)[-1]
        good = read_bytes(seg)
        # a writer died in the middle of its write, holding the lock: half a record
        overwrite(seg, len(good), good[64 : 64 + 40])
        assert b.append(payload(2)) == 2
        assert [d.kind for d in b.recovery] == ["torn_tail"]
        assert b.recovery[0].offset == len(good)
        assert read_bytes(seg + f".broken-{len(good)}") == good[64 : 64 + 40]
        assert a.append(payload(3)) == 3
    assert read_all(wal) == [(1, payload(1)), (2, payload(2)), (3, payload(3))]


def test_a_reader_does_not_judge_or_cut_bytes_being_written(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    seen = Foreign()
    with Log.open(wal) as a, Log.open(wal, on_foreign=seen) as b:
        a.append(payload(1))
        seg = segment_paths(wal)[-1]
        size = os.path.getsize(seg)
        overwrite(seg, size, b"\x07" * 40)  # as if a writer were mid-write
        b.follow()
        assert seen.lsns() == [1]
        assert os.path.getsize(seg) == size + 40  # untouched
        assert b.recovery == []


def test_a_torn_segment_creation_left_by_a_dead_writer_is_set_aside(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, segment_size=4096) as a, Log.open(wal, segment_size=4096) as b:
        lsn = a.append(payload(1))
        first = segment_paths(wal)[-1]
        name = f"{2:016x}-{lsn + 1:016x}.wal"
        Path(wal, name).write_bytes(b"WFSTWAL\x00" + bytes(20))  # died writing its header
        assert b.append(payload(2)) == 2
        assert [d.kind for d in b.recovery] == ["torn_segment"]
        assert os.path.exists(os.path.join(wal, name + ".broken-0"))
        assert segment_paths(wal) == [first]
    assert [lsn for lsn, _ in read_all(wal)] == [1, 2]


def test_damage_before_durable_records_is_corruption_for_the_next_writer(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as a, Log.open(wal) as b:
        a.append(payload(1))
        seg = segment_paths(wal)[-1]
        size_after_one = os.path.getsize(seg)
        for i in range(2, 5):
            a.append(payload(i))  # each written after a sync: each carries AFTER_SYNC
        before = read_bytes(seg)
        overwrite(seg, size_after_one + 40, b"\xff")  # damage record 2's payload: durable data
        with pytest.raises(CorruptionError):
            b.append(payload(4))
        assert read_bytes(seg)[: len(before)] != before  # only our damage...
        assert len(read_bytes(seg)) == len(before)  # ...nothing cut, nothing appended
        assert not b.poisoned


def test_a_log_shortened_under_a_handle_is_refused(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as a, Log.open(wal) as b:
        a.append(payload(1))
        b.follow()
        seg = segment_paths(wal)[-1]
        truncate_at(seg, 64)
        with pytest.raises(CorruptionError, match="reopen"):
            b.follow()


def test_a_writer_counts_others_records_durable_from_the_hint(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as a, Log.open(wal) as b:
        a.append(payload(1))
        b.follow()
        assert b.durable_lsn == 1  # a synced and said so in the hint
        b.append(payload(2))
    spans = record_spans(read_bytes(segment_paths(wal)[-1]))
    assert [s.flags & FLAG_AFTER_SYNC for s in spans] == [FLAG_AFTER_SYNC, FLAG_AFTER_SYNC]


def test_without_a_hint_a_writer_does_not_claim_others_records_durable(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    lock = os.path.join(wal, "LOCK")
    with Log.open(wal) as a, Log.open(wal) as b:
        a.append(payload(1))
        Path(lock).write_bytes(b"")  # no hint: as after a writer died before writing it
        b.follow()
        assert b.durable_lsn == 0
        b.append(payload(2))  # syncs, but its record cannot say everything before was synced
        assert b.durable_lsn == 2
        b.append(payload(3))
    spans = record_spans(read_bytes(segment_paths(wal)[-1]))
    assert [s.flags & FLAG_AFTER_SYNC for s in spans] == [FLAG_AFTER_SYNC, 0, FLAG_AFTER_SYNC]


def test_waiting_for_another_writers_record_syncs_it(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as a, Log.open(wal) as b:
        a.append(payload(1))
        Path(wal, "LOCK").write_bytes(b"")
        b.follow()
        assert b.durable_lsn == 0
        b.wait(1)
        assert b.durable_lsn == 1


def test_open_rewrites_a_stale_hint(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as log:
        log.append(payload(1))
        epoch = log.epoch
    lock = os.path.join(wal, "LOCK")
    Path(lock).write_bytes(pack_hint(epoch, 0))  # stale: a crash lost the later hints
    with Log.open(wal):
        assert unpack_hint(read_bytes(lock)[:HINT_SIZE], epoch) == 1
    # a hint claiming more than the log holds is refused instead (tests/test_log_hint.py)


def test_a_held_lock_makes_writers_wait_then_time_out(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, lock_timeout=0.05) as log:
        log.append(b"one")
        holder = OS_FS.open_lock(os.path.join(wal, "LOCK"))
        assert OS_FS.try_lock(holder)
        try:
            with pytest.raises(LockTimeoutError) as info:
                log.append(b"two")
            assert info.value.retryable
            assert log.read().__next__().lsn == 1  # reading is not blocked
        finally:
            OS_FS.close_lock(holder)
        assert log.append(b"two") == 2


def test_a_writer_under_sustained_load_lets_another_handle_in(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    stop = threading.Event()
    with Log.open(wal) as busy, Log.open(wal, lock_timeout=1) as other:

        def hammer() -> None:
            while not stop.is_set():
                busy.append(b"busy")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            lsns = [other.append(b"other") for _ in range(5)]  # LockTimeoutError if starved
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert len(set(lsns)) == 5


def test_lock_timeout_bounds_the_whole_wait_of_every_thread(tmp_path: Path) -> None:
    # A thread waiting behind another thread of its handle (which is polling) counts that
    # time too: each gives up after about lock_timeout, not one timeout after the other.
    wal = str(tmp_path / "wal")
    timeout = 0.5
    with Log.open(wal, lock_timeout=timeout) as log:
        holder = OS_FS.open_lock(os.path.join(wal, "LOCK"))
        assert OS_FS.try_lock(holder)
        waited: list[float] = []
        errors: list[BaseException] = []

        def append() -> None:
            start = time.monotonic()
            try:
                log.append(b"x")
            except LockTimeoutError as exc:
                errors.append(exc)
            waited.append(time.monotonic() - start)

        try:
            threads = [threading.Thread(target=append) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            OS_FS.close_lock(holder)
        assert len(errors) == 3
        assert max(waited) < 1.8 * timeout, waited


def test_every_crash_during_the_repair_of_a_dead_writers_tail_keeps_every_acked_record(
    crash_report: list[str],
) -> None:
    """The crash simulator over catching up: a writer dies mid-write holding the lock (half a
    record, never synced), the next writer cuts it (evidence, truncate, sync) and appends.
    Every disk a crash at any operation of that could leave recovers with every acknowledged
    record and only records that were appended, in order."""
    fs = SimFileSystem()
    wal = "/store/wal"
    options: dict[str, Any] = {"fs": fs, "compression": Compression(codec="none")}
    dead, next_writer = Log.open(wal, **options), Log.open(wal, **options)
    appended: list[bytes] = []
    acked_at: dict[int, int] = {}  # lsn -> op count when acknowledged
    for i in range(3):
        appended.append(payload(i))
        lsn = dead.append(appended[-1])
        acked_at[lsn] = fs.op_count
    fd = fs.open_append(list_segments(fs, wal)[-1].path)
    fs.write(fd, payload(99)[:100])  # the dead writer's last, partial write
    repair_from = fs.op_count
    for i in range(3, 6):
        appended.append(payload(i))
        lsn = next_writer.append(appended[-1])
        acked_at[lsn] = fs.op_count
    assert [d.kind for d in next_writer.recovery] == ["torn_tail"]
    next_writer.close()

    states = 0
    for at in range(repair_from, fs.op_count + 1):
        for label, disk in fs.crash_states(at):
            states += 1
            with Log.open(wal, fs=disk) as log:
                got = [r.payload for r in log.read()]
            assert got == appended[: len(got)], f"op {at} {label}: not a prefix"
            owed = max((lsn for lsn, op in acked_at.items() if op <= at), default=0)
            assert len(got) >= owed, f"op {at} {label}: acknowledged LSN {owed} lost"
    crash_report.append(
        f"repair of a dead writer's torn tail by the next writer: {states} crash states at "
        f"{fs.op_count + 1 - repair_from} crash points; every acknowledged record kept"
    )
    assert states > 50
