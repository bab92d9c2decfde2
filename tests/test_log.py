"""Contracts of the write-ahead log writer: LSNs, rotation, codecs, durability levels, group
commit, poisoning and input validation."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.bytesutil import flip_bit
from tests.fsdoubles import FailingFS, RecordingFS
from wfstate.errors import (
    ClosedError,
    CorruptionError,
    NotFoundError,
    StorePoisonedError,
    ValidationError,
)
from wfstate.format import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, FLAG_AFTER_SYNC, parse_segment_name
from wfstate.fs import OS_FS
from wfstate.wal import Compression, Log, LogScan, list_segments


def payload(i: int, size: int = 400) -> bytes:
    text = f"step {i} output: the agent summarised the document and found {i % 7} issues. "
    return (text * (size // len(text) + 1)).encode()[:size]


def read_all(wal: Path) -> list[tuple[int, bytes]]:
    with Log.open(str(wal)) as log:
        return [(r.lsn, r.payload) for r in log.read()]


def test_append_returns_contiguous_lsns_and_read_returns_payloads(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    with Log.open(str(wal)) as log:
        lsns = [log.append(payload(i)) for i in range(20)]
        assert lsns == list(range(1, 21))
        assert log.last_lsn == log.durable_lsn == 20
        assert [(r.lsn, r.payload) for r in log.read(from_lsn=15)] == [
            (i + 1, payload(i)) for i in range(14, 20)
        ]
    assert read_all(wal) == [(i + 1, payload(i)) for i in range(20)]


def test_reopen_continues_lsns_after_the_last_record(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as log:
        log.append(b"one")
        log.append(b"two")
    with Log.open(wal) as log:
        assert log.last_lsn == 2
        assert log.append(b"three") == 3
    assert read_all(Path(wal)) == [(1, b"one"), (2, b"two"), (3, b"three")]


def test_rotation_keeps_lsns_contiguous(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    with Log.open(str(wal), segment_size=4096, compression=Compression(codec="none")) as log:
        for i in range(200):
            log.append(payload(i, 300))
    segments = list_segments(OS_FS, str(wal))
    assert len(segments) > 10
    assert [s.seq for s in segments] == list(range(1, len(segments) + 1))
    records = read_all(wal)
    assert [lsn for lsn, _ in records] == list(range(1, 201))
    # each segment's name carries the LSN of its first record, and records never span files
    scan = LogScan(OS_FS, str(wal))
    first_in: dict[str, int] = {}
    for seg, _offset, header in scan.headers():
        first_in.setdefault(seg.name, header.lsn)
    for seg in segments:
        parsed = parse_segment_name(seg.name)
        assert parsed is not None
        assert first_in[seg.name] == parsed[1]
        assert os.path.getsize(seg.path) <= 4096 + 512  # full segment: one record may pass


@pytest.mark.parametrize(
    ("compression", "codec"),
    [
        (Compression(codec="none"), CODEC_NONE),
        (Compression(codec="lz4"), CODEC_LZ4),
        (Compression(codec="lz4", level=9), CODEC_LZ4),
        (Compression(codec="zstd"), CODEC_ZSTD),
        (Compression(codec="zstd", level=19), CODEC_ZSTD),
    ],
)
def test_all_codecs_round_trip(tmp_path: Path, compression: Compression, codec: int) -> None:
    wal = tmp_path / "wal"
    data = [payload(i, 2000) for i in range(5)] + [b"tiny"]
    with Log.open(str(wal), compression=compression) as log:
        for item in data:
            log.append(item)
    assert [p for _, p in read_all(wal)] == data
    codecs = [h.codec for _, _, h in LogScan(OS_FS, str(wal)).headers()]
    assert codecs == [codec] * 5 + [CODEC_NONE]  # below the threshold: stored raw


def test_incompressible_payload_is_stored_raw(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    noise = os.urandom(4000)
    with Log.open(str(wal)) as log:
        log.append(noise)
    assert [h.codec for _, _, h in LogScan(OS_FS, str(wal)).headers()] == [CODEC_NONE]
    assert read_all(wal) == [(1, noise)]


def test_always_acknowledges_only_after_fdatasync(tmp_path: Path) -> None:
    fs = RecordingFS()
    with Log.open(str(tmp_path / "wal"), fs=fs) as log:
        for i in range(10):
            lsn = log.append(payload(i))
            assert fs.ops[-1] == ("fdatasync", 0)
            assert fs.ops[-2][0] == "write"
            assert log.durable_lsn == lsn


def test_group_commit_shares_one_write_and_one_sync(tmp_path: Path) -> None:
    fs = RecordingFS(sync_delay=0.003)
    threads, per_thread = 8, 40
    results: list[list[int]] = [[] for _ in range(threads)]
    with Log.open(str(tmp_path / "wal"), fs=fs) as log:
        syncs_at_open = fs.count("fdatasync")
        writes_at_open = fs.count("write")  # the first segment's header

        def worker(k: int) -> None:
            for i in range(per_thread):
                results[k].append(log.append(payload(k * 1000 + i)))

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        syncs = fs.count("fdatasync") - syncs_at_open
        writes = fs.count("write") - writes_at_open
        assert log.durable_lsn == threads * per_thread
    lsns = sorted(lsn for r in results for lsn in r)
    assert lsns == list(range(1, threads * per_thread + 1))
    total = threads * per_thread
    # sharing happened: far fewer syncs and writes than appends, and one sync per write
    assert syncs <= total // 2, (syncs, total)
    assert writes == syncs
    # each thread's own appends are acknowledged in order
    for r in results:
        assert r == sorted(r)


def test_after_sync_flag_marks_records_written_after_a_completed_sync(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, durability="none") as log:
        for i in range(4):
            log.append(payload(i))
        log.sync()
        log.append(payload(4))
        log.append(payload(5))
    flags = [bool(h.flags & FLAG_AFTER_SYNC) for _, _, h in LogScan(OS_FS, wal).headers()]
    # open syncs the tail, so the first record follows a sync; so does the first after sync()
    assert flags == [True, False, False, False, True, False]
    with Log.open(wal, durability="always") as log:
        log.append(b"a")
        log.append(b"b")
    flags = [bool(h.flags & FLAG_AFTER_SYNC) for _, _, h in LogScan(OS_FS, wal).headers()]
    assert flags[-2:] == [True, True]


def test_none_does_not_sync_until_sync_or_close(tmp_path: Path) -> None:
    fs = RecordingFS()
    log = Log.open(str(tmp_path / "wal"), durability="none", fs=fs)
    before = fs.count("fdatasync")
    for i in range(10):
        log.append(payload(i))
    assert fs.count("fdatasync") == before
    assert log.durable_lsn == 0
    log.sync()
    assert log.durable_lsn == 10
    log.append(b"more")
    log.close()
    assert fs.count("fdatasync") == before + 2


def test_interval_syncs_in_the_background(tmp_path: Path) -> None:
    with Log.open(str(tmp_path / "wal"), durability="interval", sync_interval_ms=5) as log:
        lsn = log.append(payload(1))
        deadline = time.monotonic() + 10
        while log.durable_lsn < lsn and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.durable_lsn == lsn


def test_failed_fdatasync_poisons_the_log_and_is_never_retried(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    fs = FailingFS("fdatasync", nth=4)  # open syncs with fsync; appends use fdatasync
    log = Log.open(wal, fs=fs)
    acked = [log.append(payload(i)) for i in range(3)]
    with pytest.raises(StorePoisonedError):
        log.append(payload(3))
    calls = fs.calls
    with pytest.raises(StorePoisonedError):
        log.append(payload(4))
    with pytest.raises(StorePoisonedError):
        log.sync()
    assert fs.calls == calls  # no fsync after the failure, not even at close
    assert log.poisoned
    log.close()
    assert fs.calls == calls
    survivors = read_all(Path(wal))
    assert [lsn for lsn, _ in survivors][:3] == acked


def test_failed_write_poisons_the_log(tmp_path: Path) -> None:
    for durability in ("always", "none"):
        wal = str(tmp_path / durability)
        fs = FailingFS("write", nth=3)
        log = Log.open(wal, fs=fs, durability=durability)
        log.append(b"one")
        with pytest.raises(StorePoisonedError):
            log.append(b"two")
        with pytest.raises(StorePoisonedError):
            log.append(b"three")
        log.close()
        assert read_all(Path(wal)) == [(1, b"one")]


def test_failed_background_sync_poisons_the_log(tmp_path: Path) -> None:
    fs = FailingFS("fdatasync", nth=1)
    log = Log.open(str(tmp_path / "wal"), fs=fs, durability="interval", sync_interval_ms=2)
    log.append(b"one")
    deadline = time.monotonic() + 10
    while not log.poisoned and time.monotonic() < deadline:
        time.sleep(0.002)
    assert log.poisoned
    with pytest.raises(StorePoisonedError):
        log.append(b"two")
    log.close()


def test_closed_log_refuses_appends_and_close_is_idempotent(tmp_path: Path) -> None:
    log = Log.open(str(tmp_path / "wal"))
    log.close()
    log.close()
    with pytest.raises(ClosedError):
        log.append(b"late")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"durability": "sometimes"}, "durability"),
        ({"segment_size": 10}, "segment_size"),
        ({"sync_interval_ms": 0}, "sync_interval_ms"),
        ({"max_record_size": 0}, "max_record_size"),
        ({"mode": "yolo"}, "mode"),
        ({"epoch": 0}, "epoch"),
        ({"compression": "zstd"}, "compression"),
        ({"lock_timeout": -1}, "lock_timeout"),
        ({"lock_timeout": float("inf")}, "lock_timeout"),
        ({"lock_timeout": "1"}, "lock_timeout"),
    ],
)
def test_bad_options_are_refused_before_anything_is_created(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    wal = tmp_path / "wal"
    with pytest.raises(ValidationError) as info:
        Log.open(str(wal), **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert not wal.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"codec": "gzip"}, "compression.codec"),
        ({"codec": "zstd", "level": 0}, "compression.level"),
        ({"codec": "lz4", "level": 17}, "compression.level"),
        ({"threshold": -1}, "compression.threshold"),
    ],
)
def test_bad_compression_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Compression(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_bad_appends_are_refused_and_write_nothing(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, max_record_size=1000) as log:
        log.append(b"ok")
        size = sum(os.path.getsize(s.path) for s in list_segments(OS_FS, wal))
        for bad, field in [
            (b"", "payload"),
            (b"x" * 1001, "payload"),
            ("text", "payload"),
        ]:
            with pytest.raises(ValidationError) as info:
                log.append(bad)  # type: ignore[arg-type]
            assert info.value.field == field
        with pytest.raises(ValidationError) as info:
            log.append(b"x", record_type=0)
        assert info.value.field == "record_type"
        assert log.last_lsn == 1
        assert sum(os.path.getsize(s.path) for s in list_segments(OS_FS, wal)) == size
    assert read_all(Path(wal)) == [(1, b"ok")]


def test_read_while_appending_sees_only_whole_records(tmp_path: Path) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    with Log.open(str(tmp_path / "wal"), segment_size=8192) as log:

        def writer() -> None:
            i = 0
            while not stop.is_set():
                log.append(payload(i))
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(30):
                lsns = [r.lsn for r in log.read()]
                assert lsns == list(range(1, len(lsns) + 1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()
            t.join()
    assert not errors


def test_open_makes_the_recovered_tail_durable(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, durability="none") as log:
        log.append(b"unsynced until close")
    fs = RecordingFS()
    with Log.open(wal, fs=fs) as log:
        assert ("fsync", 0) in fs.ops
        assert log.durable_lsn == 1


def test_open_reads_only_the_last_segment_and_only_once(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, segment_size=4096, compression=Compression(codec="none")) as log:
        for i in range(40):
            log.append(payload(i, 300))
    segments = list_segments(OS_FS, wal)
    assert len(segments) > 2
    fs = RecordingFS()
    with Log.open(wal, fs=fs):
        pass
    assert fs.whole_reads == [segments[-1].path]
    with open(segments[-1].path, "ab") as f:  # a torn tail to cut: still one whole read
        f.write(b"\x01" * 100)
    fs = RecordingFS()
    with Log.open(wal, fs=fs) as log:
        assert [d.kind for d in log.recovery] == ["torn_tail"]
    assert fs.whole_reads == [segments[-1].path]


def noise(i: int) -> bytes:
    return random.Random(i).randbytes(600)  # incompressible: segments fill predictably


def test_read_at_finds_records_read_written_and_followed_and_verifies_them(
    tmp_path: Path,
) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, segment_size=4096) as log:
        for i in range(12):
            log.append(noise(i))
    with Log.open(wal, segment_size=4096) as log, Log.open(wal, segment_size=4096) as other:
        with pytest.raises(NotFoundError):
            log.read_at(3)  # not read yet by this handle
        assert [r.lsn for r in log.read()] == list(range(1, 13))
        log.append(noise(12))
        other.append(noise(13))
        log.follow()
        assert len(list_segments(OS_FS, wal)) > 1
        for lsn in (1, 7, 12, 13, 14):
            assert log.read_at(lsn).payload == noise(lsn - 1)
        seg = list_segments(OS_FS, wal)[0].path
        flip_bit(seg, 8 * 100)  # inside record 1
        with pytest.raises(CorruptionError, match="no longer verifies"):
            log.read_at(1)


def test_read_at_finds_records_on_both_sides_of_a_skipped_one(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal) as log:
        for i in range(6):
            log.append(noise(i))
    seg = list_segments(OS_FS, wal)[0].path
    flip_bit(seg, 8 * (64 + 2 * (32 + 600) + 100))  # inside record 3
    with Log.open(wal, mode="skip_corrupted") as log:
        assert [r.lsn for r in log.read()] == [1, 2, 4, 5, 6]
        assert [log.read_at(lsn).payload for lsn in (1, 2, 4, 6)] == [
            noise(0),
            noise(1),
            noise(3),
            noise(5),
        ]
        with pytest.raises(NotFoundError):
            log.read_at(3)
