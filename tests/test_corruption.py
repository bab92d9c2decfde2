"""Damaged logs: every test is named after the rule of docs/format.md it proves.

The damage is done with the byte helpers of ``bytesutil`` on logs the real writer produced
(durability ``always``, single-threaded, so every record carries ``AFTER_SYNC``: the first record
of each group commit), then the log is opened and read with the real ``OS_FS``.

The tests at the end were found as deviations of the code from the spec and are kept as
regression tests.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.bytesutil import (
    Span,
    flip_bit,
    flipped,
    frame,
    genesis,
    overwrite,
    read_bytes,
    record_spans,
    reseal_header,
    segment_header,
    segment_paths,
    snapshot,
    truncate_at,
    write_bytes,
)
from wfstate.errors import CorruptionError, FormatVersionError, TornWriteError, WfstateError
from wfstate.format import FORMAT_VERSION, LOCK_FILE
from wfstate.fs import OS_FS
from wfstate.wal import Compression, Log, LogDamage, LogScan, Record, RecoveryMode

TEXT = b"the quick brown fox jumps over the lazy dog; "
FLAG_AFTER_SYNC = 0x01


# -- helpers ----------------------------------------------------------------------------------
def noise(n: int, seed: int) -> bytes:
    """``n`` incompressible, deterministic bytes."""
    return random.Random(seed).randbytes(n)


def write_log(
    wal: Path,
    payloads: Sequence[bytes],
    *,
    epoch: int | None = None,
    segment_size: int = 4096,
    compression: Compression | None = None,
) -> None:
    """Write ``payloads``, then reboot: ``LOCK`` loses its durability hint (never synced, so
    any crash may lose it), so the damage a test does is judged by the log alone. The hint's
    own check (a log ending before the durable LSN it names) is tested at the end."""
    with Log.open(str(wal), segment_size=segment_size, compression=compression, epoch=epoch) as log:
        for p in payloads:
            log.append(p)
    forget_hint(wal)


def log_files_snapshot(wal: Path) -> dict[str, bytes]:
    """The log's files (``LOCK`` left out: every successful open rewrites its hint)."""
    files = snapshot(wal)
    files.pop(LOCK_FILE, None)
    return files


def forget_hint(wal: Path) -> None:
    """What a reboot may do to ``LOCK``: its unsynced durability hint is gone."""
    (wal / LOCK_FILE).write_bytes(b"")


def open_read(
    wal: Path, mode: RecoveryMode = "tolerate_torn_tail"
) -> tuple[list[Record], list[LogDamage]]:
    """Open the log (running recovery), read every record, close it."""
    with Log.open(str(wal), mode=mode, segment_size=4096) as log:
        return list(log.read()), list(log.recovery)


def scan(wal: Path, mode: RecoveryMode = "tolerate_torn_tail") -> list[Record]:
    """Read-only scan of the whole log."""
    return list(LogScan(OS_FS, str(wal), mode=mode).records())


def payloads_of(records: Sequence[Record]) -> list[bytes]:
    return [r.payload for r in records]


def lsns_of(records: Sequence[Record]) -> list[int]:
    return [r.lsn for r in records]


def spans_of(path: str) -> list[Span]:
    return record_spans(read_bytes(path))


def append_and_reread(wal: Path, before: Sequence[bytes], extra: bytes) -> None:
    """Append ``extra`` after recovery, reopen, and check the whole log reads back."""
    with Log.open(str(wal), segment_size=4096) as log:
        assert log.append(extra) == len(before) + 1
    records, damage = open_read(wal)
    assert damage == []
    assert payloads_of(records) == [*before, extra]
    assert lsns_of(records) == list(range(1, len(before) + 2))


SIX = [noise(100 + 37 * i, i) for i in range(6)]


# -- §4/§6: a torn tail is a clean end ----------------------------------------------------------
@pytest.mark.parametrize("where", ["in_header", "in_payload", "last_byte_missing"])
def test_truncated_trailing_record_is_ignored(tmp_path: Path, where: str) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX)
    (seg,) = segment_paths(wal)
    data = read_bytes(seg)
    last = record_spans(data)[-1]
    cut = {
        "in_header": last.offset + 20,
        "in_payload": last.offset + 32 + 50,
        "last_byte_missing": len(data) - 1,
    }[where]
    truncate_at(seg, cut)

    records, damage = open_read(wal)
    assert payloads_of(records) == SIX[:-1]
    assert lsns_of(records) == [1, 2, 3, 4, 5]
    assert len(damage) == 1
    assert damage[0].kind == "torn_tail"
    assert (damage[0].path, damage[0].offset, damage[0].length) == (
        seg,
        last.offset,
        cut - last.offset,
    )
    # the cut bytes are kept as evidence, the segment is truncated where the valid log ends
    assert read_bytes(f"{seg}.broken-{last.offset}") == data[last.offset : cut]
    assert os.path.getsize(seg) == last.offset

    # recovering again gives the same log and changes nothing more
    after = log_files_snapshot(wal)
    for _ in range(2):
        again, damage_again = open_read(wal)
        assert again == records
        assert damage_again == []
        assert log_files_snapshot(wal) == after
    append_and_reread(wal, SIX[:-1], b"after the cut")


@pytest.mark.parametrize("shape", ["zeros_after_last_record", "last_record_zeroed"])
def test_zero_filled_tail_is_a_clean_end(tmp_path: Path, shape: str) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX)
    (seg,) = segment_paths(wal)
    data = read_bytes(seg)
    last = record_spans(data)[-1]
    if shape == "zeros_after_last_record":  # e.g. a preallocated or size-extended file
        overwrite(seg, len(data), bytes(4096))
        expected, end = SIX, len(data)
    else:  # the file grew to its full size, the data never reached the disk
        overwrite(seg, last.offset, bytes(last.size))
        expected, end = SIX[:-1], last.offset

    records, damage = open_read(wal)
    assert payloads_of(records) == expected
    assert [(d.kind, d.offset) for d in damage] == [("torn_tail", end)]
    assert os.path.getsize(seg) == end
    append_and_reread(wal, expected, b"after the zeros")


# -- §4: damage to durable bytes is corruption, reported with file and offset ------------------
@pytest.mark.parametrize("segment", ["last", "earlier"])
def test_checksum_mismatch_reported_with_file_and_offset(tmp_path: Path, segment: str) -> None:
    wal = tmp_path / "wal"
    payloads = [noise(700, i) for i in range(14)]  # three segments: 5, 5 and 4 records
    write_log(wal, payloads)
    segs = segment_paths(wal)
    assert len(segs) == 3
    seg = segs[-1] if segment == "last" else segs[0]
    spans = spans_of(seg)
    assert len(spans) >= 4
    # durability "always": every record is the first of its group commit, so all carry
    # AFTER_SYNC, and the ones after the damaged record prove it was durable
    assert all(s.flags & FLAG_AFTER_SYNC for s in spans)
    target = spans[1]
    flip_bit(seg, 8 * (target.offset + 32 + 100) + 3)  # a payload byte of the 2nd record
    before = log_files_snapshot(wal)

    with pytest.raises(CorruptionError) as raised:
        open_read(wal)
    assert not isinstance(raised.value, TornWriteError)
    assert raised.value.path == seg
    assert raised.value.offset == target.offset
    assert "checksum" in raised.value.reason
    with pytest.raises(CorruptionError) as scanned:
        scan(wal)
    assert (scanned.value.path, scanned.value.offset) == (seg, target.offset)
    assert (
        log_files_snapshot(wal) == before
    )  # nothing on disk changed, no evidence file, no truncation


# -- §3: the checksum chain ties a record to its place in its store ---------------------------
def test_stale_record_from_an_older_epoch_is_rejected(tmp_path: Path) -> None:
    payloads = [noise(150 + 40 * i, i) for i in range(6)]
    a, b = tmp_path / "a", tmp_path / "b"
    write_log(a, payloads, epoch=0xAAAA)
    write_log(b, payloads, epoch=0xBBBB)  # same payloads: same sizes, same offsets
    (seg_a,) = segment_paths(a)
    (seg_b,) = segment_paths(b)
    data_a, data_b = read_bytes(seg_a), read_bytes(seg_b)
    spans = record_spans(data_a)
    assert [(s.offset, s.size) for s in spans] == [(s.offset, s.size) for s in record_spans(data_b)]

    for k, span in enumerate(spans):
        stale = data_b[span.offset : span.offset + span.size]
        assert stale != data_a[span.offset : span.offset + span.size]  # differs only by chain
        for mode in ("tolerate_torn_tail", "skip_corrupted"):
            wal = tmp_path / f"splice-{k}-{mode}"
            wal.mkdir()
            seg = str(wal / os.path.basename(seg_a))
            write_bytes(seg, data_a[: span.offset] + stale + data_a[span.offset + span.size :])
            if mode == "tolerate_torn_tail" and k <= len(spans) - 3:
                # records after it verify by chain and carry AFTER_SYNC: corruption
                with pytest.raises(CorruptionError) as raised:
                    open_read(wal, mode)
                assert (raised.value.path, raised.value.offset) == (seg, span.offset)
                continue
            records, damage = open_read(wal, mode)
            # never accepted: neither the stale record nor anything chained after it unverified
            assert k + 1 not in lsns_of(records)
            for r in records:
                assert r.payload == payloads[r.lsn - 1]
            assert damage and damage[0].offset == span.offset
            if k >= len(spans) - 2:
                # The final record cannot vouch for the damaged one: §4 (a) seeds with the
                # stale record's own (foreign) checksum, and (b) needs a plausible header
                # *followed by* a verifying record. So splicing into one of the last two
                # records is a torn tail, and the final record is cut with it.
                assert damage[0].kind == "torn_tail"
                assert lsns_of(records) == list(range(1, k + 1))
            else:
                # skip_corrupted: reported and skipped. Resynchronising by §4 (b) finds the
                # next record but cannot verify it (its seed is the damaged record's true
                # checksum), so reading resumes at the one after: two LSNs are missing.
                assert damage[0].kind == "corruption"
                assert damage[0].length == span.size + spans[k + 1].size
                assert lsns_of(records) == [i + 1 for i in range(len(spans)) if i not in (k, k + 1)]


def test_segment_of_another_store_placed_as_next_segment_is_corruption(tmp_path: Path) -> None:
    payloads = [noise(700, i) for i in range(8)]
    a, b = tmp_path / "a", tmp_path / "b"
    write_log(a, payloads, epoch=0xAAAA)
    write_log(b, payloads, epoch=0xBBBB)
    segs_a, segs_b = segment_paths(a), segment_paths(b)
    assert len(segs_a) == len(segs_b) == 2
    assert [os.path.basename(s) for s in segs_a] == [os.path.basename(s) for s in segs_b]
    shutil.copyfile(segs_b[1], segs_a[1])
    # Open alone does not see it (the default mode reads only the last segment at open, see
    # test_foreign_last_segment_is_refused_at_open); reading the log does.
    with pytest.raises(CorruptionError) as raised:
        open_read(a)
    assert raised.value.path == segs_a[1]
    with pytest.raises(CorruptionError):
        scan(a)


def test_segment_with_another_epoch_is_corruption_even_if_its_chain_continues(
    tmp_path: Path,
) -> None:
    # §3.1 across segments: "its epoch equals the store's", checked on its own: segment 2 is
    # framed by hand to continue segment 1's chain exactly, but carries another epoch.
    wal = tmp_path / "wal"
    payloads = [noise(700, i) for i in range(5)]
    write_log(wal, payloads, epoch=0xAAAA)
    (seg1,) = segment_paths(wal)
    last = spans_of(seg1)[-1]
    seed = last.checksum
    parts = [segment_header(epoch=0xBBBB, seq=2, first_lsn=6, prev_checksum=seed)]
    for lsn in (6, 7):
        framed, seed = frame(seed=seed, lsn=lsn, body=b"record %d" % lsn, raw_length=8)
        parts.append(framed)
    seg2 = str(wal / "0000000000000002-0000000000000006.wal")
    write_bytes(seg2, b"".join(parts))
    with pytest.raises(CorruptionError) as raised:
        open_read(wal)
    assert raised.value.path == seg2
    with pytest.raises(CorruptionError):
        scan(wal)


# -- every bit of every segment ---------------------------------------------------------------
def write_mixed_log(wal: Path) -> list[bytes]:
    """Two segments, eight records, codecs none/lz4/zstd, payloads below/above the threshold."""
    plan: list[tuple[Compression | None, bytes]] = [
        (None, b"\x82\xa4step\xa5fetch\xa6status\xa7started"),  # below threshold: none
        (None, TEXT * 45),  # zstd
        (None, noise(300, 1)),  # above threshold, does not shrink: none
        (Compression(codec="lz4"), TEXT * 33),  # lz4
        (Compression(codec="none"), TEXT * 9),  # none by setting
        (Compression(codec="lz4"), noise(3000, 2)),  # does not fit: opens segment 2
        (None, TEXT * 50),  # zstd
        (None, b"\x81\xa4done\xc3"),  # below threshold: none
    ]
    for compression, payload in plan:  # reopening between appends changes the codec setting
        write_log(wal, [payload], compression=compression)
    return [p for _, p in plan]


def test_every_single_bit_flip_in_a_segment_is_detected(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    payloads = write_mixed_log(wal)
    segs = segment_paths(wal)
    assert len(segs) == 2
    original = {s: read_bytes(s) for s in segs}
    spans = {s: record_spans(original[s]) for s in segs}
    assert {sp.codec for ss in spans.values() for sp in ss} == {0, 1, 2}
    assert all(sp.flags & FLAG_AFTER_SYNC for ss in spans.values() for sp in ss)
    names = sorted(os.listdir(wal))
    last_seg = segs[-1]
    final = spans[last_seg][-1]
    counts: collections.Counter[str] = collections.Counter()

    for seg in segs:
        data = original[seg]
        for bit in range(len(data) * 8):
            bad = flipped(data, bit)
            flip_bit(seg, bit)
            where = f"{os.path.basename(seg)} bit {bit} (byte {bit // 8})"
            outcome: str
            forget_hint(wal)  # each flip judged by the log alone (the open before rewrote it)
            try:
                log = Log.open(str(wal))
            except WfstateError as exc:
                outcome = f"error at open: {type(exc).__name__}"
                # §6: corruption changes nothing
                assert sorted(os.listdir(wal)) == names, where
                assert all(read_bytes(s) == (bad if s == seg else original[s]) for s in segs)
            else:
                try:
                    records = list(log.read())
                except WfstateError as exc:
                    outcome = f"error at read: {type(exc).__name__}"
                else:
                    n = len(records)
                    assert lsns_of(records) == list(range(1, n + 1)), where
                    for r in records:  # no silently wrong record
                        assert r.payload == payloads[r.lsn - 1], where
                    assert n < len(payloads), f"{where}: flip not detected at all"
                    # Missing records are a torn tail: the flip is in the last segment, at or
                    # after the first missing record, and it was reported.
                    index = n + 1 - spans[last_seg][0].lsn
                    assert index >= 0, f"{where}: records of an earlier segment are missing"
                    first_missing = spans[last_seg][index]
                    assert seg == last_seg, where
                    assert bit // 8 >= first_missing.offset, where
                    assert [(d.kind, d.offset) for d in log.recovery] == [
                        ("torn_tail", first_missing.offset)
                    ], where
                    if bit // 8 >= final.offset:
                        outcome = "torn tail: flip in the final record"
                    else:
                        outcome = "torn tail: flip in an earlier record, final record cut too"
                finally:
                    log.close()
            counts[outcome] += 1
            # put the original bytes back (and drop evidence files) for the next bit
            for name in set(os.listdir(wal)) - set(names):
                os.unlink(wal / name)
            for s in segs:
                current = read_bytes(s)
                if s == seg and current == bad:
                    flip_bit(s, bit)
                elif current != original[s]:
                    write_bytes(s, original[s])

    print(f"\nbit flips over {sum(map(len, original.values()))} bytes:")
    for outcome, count in sorted(counts.items()):
        print(f"  {count:6d}  {outcome}")
    assert sum(counts.values()) == 8 * sum(map(len, original.values()))
    assert counts["error at open: CorruptionError"] > 0  # last segment, not its final record
    assert counts["error at read: CorruptionError"] > 0  # first segment (read only when read)
    assert counts["torn tail: flip in the final record"] == 8 * final.size
    allowed = {
        "error at open: CorruptionError",
        "error at read: CorruptionError",
        "torn tail: flip in the final record",
        "torn tail: flip in an earlier record, final record cut too",
    }
    assert set(counts) <= allowed, counts


# -- truncation -------------------------------------------------------------------------------
def test_truncation_at_every_byte_is_handled(tmp_path: Path) -> None:
    source = tmp_path / "source"
    payloads = [noise(120, i) for i in range(4)] + [noise(3300, 9)]  # segment 1
    payloads += [noise(200, 10), b"x" * 9, TEXT * 20, b"y" * 17]  # segment 2
    write_log(source, payloads)
    seg1, seg2 = segment_paths(source)
    data1, data2 = read_bytes(seg1), read_bytes(seg2)
    in_seg1 = len(record_spans(data1))
    spans2 = record_spans(data2)
    assert in_seg1 == 5
    assert in_seg1 + len(spans2) == len(payloads)
    outcomes: collections.Counter[str] = collections.Counter()

    for size in range(len(data2) + 1):
        wal = tmp_path / f"t{size}"
        wal.mkdir()
        s1, s2 = str(wal / os.path.basename(seg1)), str(wal / os.path.basename(seg2))
        write_bytes(s1, data1)
        write_bytes(s2, data2[:size])
        whole = [sp for sp in spans2 if sp.offset + sp.size <= size]
        expected = payloads[: in_seg1 + len(whole)]

        records, damage = open_read(wal)  # must not raise: a torn last segment is a clean end
        assert payloads_of(records) == expected, size
        assert lsns_of(records) == list(range(1, len(expected) + 1)), size
        if size < 64:  # §4: a torn segment creation, renamed away as evidence
            assert [d.kind for d in damage] == ["torn_segment"], size
            assert read_bytes(f"{s2}.broken-0") == data2[:size]
            assert not os.path.exists(s2)
            outcomes["torn segment creation"] += 1
        else:
            end = whole[-1].offset + whole[-1].size if whole else 64
            assert os.path.getsize(s2) == end, size
            if size == end:
                assert damage == [], size
                outcomes["clean end"] += 1
            else:
                assert [(d.kind, d.offset) for d in damage] == [("torn_tail", end)], size
                # every cut byte is kept, zeros included (§6)
                assert read_bytes(f"{s2}.broken-{end}") == data2[end:size], size
                outcomes["torn tail"] += 1
        append_and_reread(wal, expected, b"appended after recovery")
        shutil.rmtree(wal)
    print(f"\ntruncations of the last segment: {dict(outcomes)}")
    assert outcomes["clean end"] == len(spans2) + 1
    assert outcomes["torn segment creation"] == 64


@pytest.mark.parametrize(
    "cut", ["empty", "partial_header", "header_only", "mid_record", "at_record"]
)
def test_truncation_of_a_segment_that_is_not_the_last_is_corruption(
    tmp_path: Path, cut: str
) -> None:
    wal = tmp_path / "wal"
    write_log(wal, [noise(700, i) for i in range(8)])
    seg1, seg2 = segment_paths(wal)
    spans = spans_of(seg1)
    size = {
        "empty": 0,
        "partial_header": 30,
        "header_only": 64,
        "mid_record": spans[2].offset + 100,
        "at_record": spans[2].offset,
    }[cut]
    truncate_at(seg1, size)
    before = log_files_snapshot(wal)
    with pytest.raises(CorruptionError) as raised:
        open_read(wal)
    assert not isinstance(raised.value, TornWriteError)
    # found in segment 1 itself, or at segment 2 whose header no longer continues the chain
    assert raised.value.path in (seg1, seg2)
    assert log_files_snapshot(wal) == before


# -- §6 recovery modes ------------------------------------------------------------------------
def test_absolute_mode_refuses_a_torn_tail_and_changes_nothing(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX)
    (seg,) = segment_paths(wal)
    last = spans_of(seg)[-1]
    truncate_at(seg, last.offset + 40)
    before = log_files_snapshot(wal)
    with pytest.raises(TornWriteError) as raised:
        open_read(wal, "absolute")
    assert (raised.value.path, raised.value.offset) == (seg, last.offset)
    assert log_files_snapshot(wal) == before
    # the same log opens in the default mode, cutting the tail
    records, _ = open_read(wal)
    assert payloads_of(records) == SIX[:-1]


def test_absolute_mode_refuses_a_torn_segment_creation_and_changes_nothing(
    tmp_path: Path,
) -> None:
    wal = tmp_path / "wal"
    write_log(wal, [noise(700, i) for i in range(8)])
    seg2 = segment_paths(wal)[1]
    write_bytes(seg2, read_bytes(seg2)[:30])
    before = log_files_snapshot(wal)
    with pytest.raises(TornWriteError):
        open_read(wal, "absolute")
    assert log_files_snapshot(wal) == before


def test_absolute_mode_raises_on_corruption_and_changes_nothing(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX)
    (seg,) = segment_paths(wal)
    target = spans_of(seg)[2]
    flip_bit(seg, 8 * (target.offset + 40))
    before = log_files_snapshot(wal)
    with pytest.raises(CorruptionError) as raised:
        open_read(wal, "absolute")
    assert not isinstance(raised.value, TornWriteError)
    assert raised.value.offset == target.offset
    assert log_files_snapshot(wal) == before


def test_point_in_time_ends_the_log_at_corruption_and_quarantines_later_segments(
    tmp_path: Path,
) -> None:
    wal = tmp_path / "wal"
    payloads, segs = three_segments(wal)
    later = {os.path.basename(s): read_bytes(s) for s in segs[1:]}
    spans = spans_of(segs[0])
    target = spans[2]  # LSN 3 of segment 1
    flip_bit(segs[0], 8 * (target.offset + 300))
    damaged = read_bytes(segs[0])
    seen: list[LogDamage] = []

    with Log.open(str(wal), mode="point_in_time", segment_size=4096, on_damage=seen.append) as log:
        assert log.last_lsn == 2
        assert payloads_of(list(log.read())) == payloads[:2]
        assert [(d.kind, d.path, d.offset) for d in log.recovery] == [
            ("corruption", segs[0], target.offset)
        ]
        assert seen == log.recovery
        assert log.append(b"new 3") == 3
        assert log.append(b"new 4") == 4
        assert payloads_of(list(log.read())) == [*payloads[:2], b"new 3", b"new 4"]

    # evidence: the rest of segment 1 as .broken-<offset>, later segments in wal/quarantine/
    assert read_bytes(f"{segs[0]}.broken-{target.offset}") == damaged[target.offset :]
    quarantine = wal / "quarantine"
    assert {n: read_bytes(quarantine / n) for n in os.listdir(quarantine)} == later
    assert read_bytes(segs[0])[: target.offset] == damaged[: target.offset]

    expected = [*payloads[:2], b"new 3", b"new 4"]
    after = log_files_snapshot(wal)
    for mode in ("point_in_time", "tolerate_torn_tail"):
        records, damage = open_read(wal, mode)
        assert payloads_of(records) == expected
        assert lsns_of(records) == [1, 2, 3, 4]
        assert damage == []
        assert log_files_snapshot(wal) == after


@pytest.mark.parametrize("segment", ["last", "earlier"])
def test_skip_corrupted_skips_a_damaged_middle_record(tmp_path: Path, segment: str) -> None:
    wal = tmp_path / "wal"
    payloads = [noise(700, i) for i in range(14)]
    write_log(wal, payloads)
    segs = segment_paths(wal)
    seg = segs[-1] if segment == "last" else segs[0]
    spans = spans_of(seg)
    target = spans[1]
    flip_bit(seg, 8 * (target.offset + 32 + 5))
    before = log_files_snapshot(wal)
    seen: list[LogDamage] = []

    with Log.open(str(wal), mode="skip_corrupted", on_damage=seen.append) as log:
        damage = [d for d in log.recovery if d.kind == "corruption"]
        assert [(d.path, d.offset, d.length) for d in damage] == [(seg, target.offset, target.size)]
        records = list(log.read())
        assert lsns_of(records) == [i for i in range(1, 15) if i != target.lsn]
        for r in records:
            assert r.payload == payloads[r.lsn - 1]
        assert log.append(b"fifteen") == 15
    assert seen[0] == damage[0]
    # the damaged bytes stay in place (the new record went after them, or to a new segment)
    damaged = before[os.path.relpath(seg, wal)]
    assert read_bytes(seg)[: len(damaged)] == damaged
    records, _ = open_read(wal, "skip_corrupted")
    assert records[-1] == Record(15, 1, b"fifteen")


@pytest.mark.parametrize("sync_after", [None, 4])
def test_after_sync_flag_separates_torn_tail_from_corruption_under_durability_none(
    tmp_path: Path, sync_after: int | None
) -> None:
    # durability "none": AFTER_SYNC only on the first record after open and after sync()
    source = tmp_path / "source"
    with Log.open(str(source), durability="none") as log:
        for i, p in enumerate(SIX, start=1):
            log.append(p)
            if i == sync_after:
                log.sync()
    (seg,) = segment_paths(source)
    spans = spans_of(seg)
    synced = {1, 5} if sync_after == 4 else {1}
    assert {sp.lsn for sp in spans if sp.flags & FLAG_AFTER_SYNC} == synced

    for target in spans[1:]:
        wal = tmp_path / f"flip-{target.lsn}"
        shutil.copytree(source, wal)
        flip_bit(str(wal / os.path.basename(seg)), 8 * (target.offset + 40))
        if any(lsn > target.lsn for lsn in synced):
            # a later record proves this one was durable: corruption
            with pytest.raises(CorruptionError) as raised:
                open_read(wal)
            assert raised.value.offset == target.offset
        else:
            # written after the last sync: indistinguishable from a torn write (§4), cut
            records, damage = open_read(wal)
            assert payloads_of(records) == SIX[: target.lsn - 1]
            assert [(d.kind, d.offset) for d in damage] == [("torn_tail", target.offset)]


def test_non_zero_padding_is_rejected_even_when_the_checksum_matches(tmp_path: Path) -> None:
    # §3.1 rule 5, checked on its own: padding bytes are zero. The record is framed by hand
    # with a checksum over its non-zero padding; an AFTER_SYNC record follows it.
    wal = tmp_path / "wal"
    wal.mkdir()
    epoch = 0x77
    seed = genesis(epoch)
    parts = [segment_header(epoch=epoch, seq=1, first_lsn=1, prev_checksum=seed)]
    for lsn, pad in ((1, 0), (2, 0xAA), (3, 0)):
        framed, seed = frame(seed=seed, lsn=lsn, body=b"five!", raw_length=5, padding_byte=pad)
        parts.append(framed)
    seg = str(wal / "0000000000000001-0000000000000001.wal")
    write_bytes(seg, b"".join(parts))
    with pytest.raises(CorruptionError) as raised:
        open_read(wal)
    assert (raised.value.path, raised.value.offset) == (seg, 64 + 40)
    assert "padding" in raised.value.reason


def test_tolerate_torn_tail_raises_on_mid_log_corruption(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX)
    (seg,) = segment_paths(wal)
    target = spans_of(seg)[3]
    flip_bit(seg, 8 * target.offset)  # the checksum field itself
    before = log_files_snapshot(wal)
    with pytest.raises(CorruptionError) as raised:
        open_read(wal)
    assert (raised.value.path, raised.value.offset) == (seg, target.offset)
    assert log_files_snapshot(wal) == before


# -- §4 torn segment creation -----------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", ["empty", "partial_header", "partial_header_then_zeros", "zero_header", "bad_header"]
)
def test_torn_segment_creation_is_renamed_and_the_log_continues(tmp_path: Path, shape: str) -> None:
    wal = tmp_path / "wal"
    payloads = [noise(700, i) for i in range(8)]
    write_log(wal, payloads)
    seg1, seg2 = segment_paths(wal)
    in_seg1 = len(spans_of(seg1))
    header = read_bytes(seg2)[:64]
    content = {
        "empty": b"",
        "partial_header": header[:30],
        "partial_header_then_zeros": header[:30] + bytes(4096 - 30),
        "zero_header": bytes(64),
        "bad_header": flipped(header, 8 * 20),
    }[shape]
    write_bytes(seg2, content)

    records, damage = open_read(wal)
    assert payloads_of(records) == payloads[:in_seg1]
    assert [(d.kind, d.path, d.offset) for d in damage] == [("torn_segment", seg2, 0)]
    assert not os.path.exists(seg2)
    assert read_bytes(f"{seg2}.broken-0") == content
    append_and_reread(wal, payloads[:in_seg1], noise(3000, 99))


def test_valid_segment_header_followed_by_zeros_is_an_empty_segment(tmp_path: Path) -> None:
    # Not a torn creation (§4 applies that only to an invalid header): the header was synced
    # at creation, the zeros after it are a torn tail, cut back to the header.
    wal = tmp_path / "wal"
    payloads = [noise(700, i) for i in range(8)]
    write_log(wal, payloads)
    seg1, seg2 = segment_paths(wal)
    in_seg1 = len(spans_of(seg1))
    write_bytes(seg2, read_bytes(seg2)[:64] + bytes(4096 - 64))
    records, damage = open_read(wal)
    assert payloads_of(records) == payloads[:in_seg1]
    assert [(d.kind, d.path, d.offset) for d in damage] == [("torn_tail", seg2, 64)]
    assert os.path.getsize(seg2) == 64
    append_and_reread(wal, payloads[:in_seg1], b"into segment 2")
    assert spans_of(seg2)[0].lsn == in_seg1 + 1


def test_invalid_last_segment_header_with_data_after_it_is_corruption(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, [noise(700, i) for i in range(8)])
    seg2 = segment_paths(wal)[1]
    flip_bit(seg2, 8 * 20)  # the epoch field: header checksum fails, records follow
    before = log_files_snapshot(wal)
    with pytest.raises(CorruptionError) as raised:
        open_read(wal)
    assert raised.value.path == seg2
    assert log_files_snapshot(wal) == before


# -- §7 versions ------------------------------------------------------------------------------
@pytest.mark.parametrize("segment", ["only", "earlier"])
def test_newer_format_version_is_refused(tmp_path: Path, segment: str) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX if segment == "only" else [noise(700, i) for i in range(8)])
    seg = segment_paths(wal)[0]
    data = bytearray(read_bytes(seg))
    struct.pack_into("<H", data, 8, FORMAT_VERSION + 1)
    write_bytes(seg, reseal_header(bytes(data)))
    before = log_files_snapshot(wal)
    with pytest.raises(FormatVersionError) as raised:
        open_read(wal)
    found = (raised.value.path, raised.value.found, raised.value.supported)
    assert found == (seg, FORMAT_VERSION + 1, FORMAT_VERSION)
    with pytest.raises(FormatVersionError):
        scan(wal)
    assert log_files_snapshot(wal) == before


# ===========================================================================================
# Regression tests for deviations from the spec found in review (all fixed)
# ===========================================================================================
def three_segments(wal: Path) -> tuple[list[bytes], list[str]]:
    payloads = [noise(700, i) for i in range(13)]
    write_log(wal, payloads)
    segs = segment_paths(wal)
    assert len(segs) == 3
    return payloads, segs


def check_point_in_time_ended_after_segment_1(
    wal: Path, payloads: list[bytes], segs: list[str], originals: dict[str, bytes]
) -> None:
    """The log ends where segment 1 ends; the bytes of the rest are kept; appends continue."""
    in_seg1 = len(spans_of(segs[0]))
    records, damage = open_read(wal, "point_in_time")
    assert payloads_of(records) == payloads[:in_seg1]
    assert any(d.kind == "corruption" for d in damage)
    kept = set(log_files_snapshot(wal).values())
    assert all(content in kept for name, content in originals.items() if name != segs[0])
    append_and_reread(wal, payloads[:in_seg1], b"continues")


def test_point_in_time_ends_the_log_at_a_chain_break_between_segments(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    payloads, segs = three_segments(wal)
    spans = spans_of(segs[0])
    # segment 1 loses its last record, cut exactly at a record boundary: segment 1 reads
    # cleanly, segment 2's prev_checksum/first_lsn no longer continue its chain (§3.1)
    truncate_at(segs[0], spans[-1].offset)
    originals = {s: read_bytes(s) for s in segs}
    check_point_in_time_ended_after_segment_1(wal, payloads[: len(spans) - 1], segs, originals)


def test_point_in_time_ends_the_log_at_a_corrupt_segment_header(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    payloads, segs = three_segments(wal)
    flip_bit(segs[1], 8 * 20)  # epoch field of segment 2: its header checksum fails
    originals = {s: read_bytes(s) for s in segs}
    check_point_in_time_ended_after_segment_1(wal, payloads, segs, originals)


def test_point_in_time_ends_the_log_before_a_last_segment_with_a_corrupt_header(
    tmp_path: Path,
) -> None:
    wal = tmp_path / "wal"
    payloads = [noise(700, i) for i in range(8)]
    write_log(wal, payloads)
    segs = segment_paths(wal)
    assert len(segs) == 2
    flip_bit(segs[1], 8 * 20)  # epoch field of the last segment: header checksum fails
    originals = {s: read_bytes(s) for s in segs}
    check_point_in_time_ended_after_segment_1(wal, payloads, segs, originals)


def test_point_in_time_ends_the_log_at_a_missing_middle_segment(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    payloads, segs = three_segments(wal)
    originals = {s: read_bytes(s) for s in segs}
    os.unlink(segs[1])
    del originals[segs[1]]
    check_point_in_time_ended_after_segment_1(wal, payloads, segs, originals)


def test_skip_corrupted_goes_past_a_corrupt_segment_header(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    payloads, segs = three_segments(wal)
    flip_bit(segs[1], 8 * 20)
    records, damage = open_read(wal, "skip_corrupted")
    assert any(d.kind == "corruption" and d.path == segs[1] for d in damage)
    for r in records:
        assert r.payload == payloads[r.lsn - 1]
    in_seg1, in_seg3 = len(spans_of(segs[0])), len(spans_of(segs[2]))
    assert lsns_of(records)[:in_seg1] == list(range(1, in_seg1 + 1))
    assert lsns_of(records)[-in_seg3:] == list(range(14 - in_seg3, 14))


def test_skip_corrupted_chain_break_reports_only_bytes_not_accepted(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    _, segs = three_segments(wal)
    spans = spans_of(segs[0])
    truncate_at(segs[0], spans[-1].offset)  # record boundary: the chain breaks at segment 2
    records, damage = open_read(wal, "skip_corrupted")
    lost = spans[-1].lsn
    assert lsns_of(records) == [i for i in range(1, 14) if i != lost]  # this part holds
    (corruption,) = [d for d in damage if d.kind == "corruption"]
    assert corruption.length == 0, corruption


def test_foreign_last_segment_is_refused_at_open(tmp_path: Path) -> None:
    payloads = [noise(700, i) for i in range(8)]
    a, b = tmp_path / "a", tmp_path / "b"
    write_log(a, payloads, epoch=0xAAAA)
    write_log(b, payloads, epoch=0xBBBB)
    shutil.copyfile(segment_paths(b)[1], segment_paths(a)[1])
    with pytest.raises(CorruptionError):
        Log.open(str(a)).close()


def test_reading_from_an_lsn_in_a_foreign_segment_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    mine = [noise(700, i) for i in range(8)]
    theirs = [noise(700, 100 + i) for i in range(8)]  # same sizes: same segment names
    write_log(a, mine, epoch=0xAAAA)
    write_log(b, theirs, epoch=0xBBBB)
    seg2 = segment_paths(a)[1]
    shutil.copyfile(segment_paths(b)[1], seg2)
    first = spans_of(seg2)[0].lsn
    try:
        records = list(LogScan(OS_FS, str(a), from_lsn=first).records())
    except CorruptionError:
        return
    assert records  # today: the records of the other store, LSN `first` onwards
    for r in records:
        assert r.payload == mine[r.lsn - 1]


def test_missing_first_segment_is_corruption(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, [noise(700, i) for i in range(12)])
    os.unlink(segment_paths(wal)[0])
    with pytest.raises(CorruptionError):
        open_read(wal)


def test_synced_segment_before_a_torn_creation_is_not_treated_as_torn(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    _, segs = three_segments(wal)
    truncate_at(segs[2], 30)  # a genuine torn creation of segment 3
    truncate_at(segs[1], 40)  # damage to segment 2, durable before segment 3 existed
    with pytest.raises(CorruptionError):
        open_read(wal)


def test_segment_header_with_first_lsn_zero_is_corruption(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    seed = genesis(5)
    header = segment_header(epoch=5, seq=1, first_lsn=0, prev_checksum=seed)
    record, _ = frame(seed=seed, lsn=0, body=b"lsn zero", raw_length=8)
    # a record follows, so this is not a torn segment creation: the invalid header is corruption
    write_bytes(wal / "0000000000000001-0000000000000000.wal", header + record)
    with pytest.raises(CorruptionError):
        open_read(wal)  # today: opens, and read() returns Record(lsn=0, ...)


def test_resync_needs_a_header_with_a_later_lsn(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    payloads = [noise(100 + 8 * i, i) for i in range(5)]
    write_log(wal, payloads)
    (seg,) = segment_paths(wal)
    data = read_bytes(seg)
    p = record_spans(data)[3].offset
    # 8 garbage bytes where record 4 should start, records 4 and 5 shifted behind them. §4:
    # (a) the header at p is implausible; (b) needs lsn > 4 followed by a verifying record
    # with the next LSN; record 5 is the last, so no offset qualifies: a torn tail.
    write_bytes(seg, data[:p] + b"\xff" * 8 + data[p:])
    records, damage = open_read(wal)
    assert payloads_of(records) == payloads[:3]
    assert [(d.kind, d.offset) for d in damage] == [("torn_tail", p)]


def test_second_cut_at_the_same_offset_keeps_the_first_evidence(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX[:3])
    (seg,) = segment_paths(wal)
    end = os.path.getsize(seg)
    overwrite(seg, end, b"\x01" * 40)  # a torn append, cut by recovery
    open_read(wal)
    overwrite(seg, end, b"\x02" * 40)  # the next append torn at the same place
    open_read(wal)
    kept = b"".join(log_files_snapshot(wal).values())
    assert b"\x02" * 40 in kept  # this part holds
    assert b"\x01" * 40 in kept


def test_zero_bytes_cut_from_a_torn_tail_are_kept_as_evidence(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, SIX)
    (seg,) = segment_paths(wal)
    end = os.path.getsize(seg)
    overwrite(seg, end, bytes(100))
    open_read(wal)
    assert os.path.getsize(seg) == end  # the cut happened
    evidence = f"{seg}.broken-{end}"
    assert os.path.exists(evidence)
    assert read_bytes(evidence) == bytes(100)


def test_skip_corrupted_skips_a_verified_record_that_does_not_decode(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    epoch = 0x1234
    seed = genesis(epoch)
    parts = [segment_header(epoch=epoch, seq=1, first_lsn=1, prev_checksum=seed)]
    bodies = [(0, b"one", 3), (2, b"not a zstd frame", 100), (0, b"three", 5)]
    for lsn, (codec, body, raw) in enumerate(bodies, start=1):
        framed, seed = frame(seed=seed, lsn=lsn, body=body, raw_length=raw, codec=codec)
        parts.append(framed)
    write_bytes(wal / "0000000000000001-0000000000000001.wal", b"".join(parts))
    seen: list[LogDamage] = []
    with Log.open(str(wal), mode="skip_corrupted", on_damage=seen.append) as log:
        records = list(log.read())
    assert [(r.lsn, r.payload) for r in records] == [(1, b"one"), (3, b"three")]
    assert ("corruption", 64 + 40) in [(d.kind, d.offset) for d in seen]


def test_skip_corrupted_never_appends_after_damage_it_left_in_place(tmp_path: Path) -> None:
    # Found by Hypothesis: one stray byte at the end of segment 1 and a bad header on segment 2
    # (the last). skip_corrupted sets segment 2 aside and keeps the stray byte; a record
    # appended right after it sat at an unaligned offset, where no reader finds it again.
    wal = tmp_path / "wal"
    payloads = [b"\xd8", noise(2500, 0), noise(2500, 1)]
    write_log(wal, payloads, segment_size=4096, compression=Compression(codec="none"))
    segs = segment_paths(wal)
    assert len(segs) == 2
    overwrite(segs[0], len(read_bytes(segs[0])), b"\x00")
    overwrite(segs[1], 0, b"\x00")
    with Log.open(str(wal), mode="skip_corrupted") as log:
        assert payloads_of(list(log.read())) == payloads[:2]
        lsn = log.append(b"after")
    with Log.open(str(wal), mode="skip_corrupted") as log:
        assert list(log.read())[-1] == Record(lsn, 1, b"after")
