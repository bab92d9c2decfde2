"""The committed golden fixtures pin the bytes of each format version (docs/format.md §7).

For every version ``v<N>``: (a) the committed files read back as exactly ``records.json``;
(c) byte offsets of the committed files match the tables of docs/format.md, decoded here with
``struct`` and ``xxhash`` only, not with ``wfstate.format``. For the current version (v2)
also: (b) generating the fixture again gives byte-identical files. v1 is never regenerated:
the current reader must read it as committed.

If (b) fails after a dependency upgrade while (a) and (c) pass, the zstd or lz4 library now
compresses the same payload to different bytes: the format did not change (the reader still
reads the old bytes, (a) proves it), so update the pinned library versions or regenerate the
fixture on purpose. If (a) or (c) fails, the on-disk format changed: bump FORMAT_VERSION.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import msgspec
import pytest
import xxhash

from fixtures.golden import (
    ANCHOR,
    DISCARD_BEFORE,
    EPOCH,
    FIXTURE_DIR,
    V1_DIR,
    generate,
    records_json,
    write_golden_log,
)
from wfstate.errors import NotFoundError
from wfstate.fs import OS_FS
from wfstate.wal import Log, LogScan, Record

SEG1_NAME = "0000000000000001-0000000000000001.wal"
SEG2_NAME = "0000000000000002-0000000000000006.wal"
V1_WAL = V1_DIR / "wal"
V2_WAL = FIXTURE_DIR / "wal"


def expected_records(fixture: Path) -> list[Record]:
    items = json.loads((fixture / "records.json").read_text(encoding="utf-8"))
    return [Record(i["lsn"], i["type"], bytes.fromhex(i["payload"])) for i in items]


def pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def xxh3(data: bytes, seed: int = 0) -> int:
    return xxhash.xxh3_64_intdigest(data, seed)


# -- (a) the committed files read back ----------------------------------------------------------
def test_committed_v1_fixture_reads_back_as_records_json(tmp_path: Path) -> None:
    expected = expected_records(V1_DIR)
    assert [r.lsn for r in expected] == list(range(1, 8))
    assert sorted(os.listdir(V1_WAL)) == [SEG1_NAME, SEG2_NAME]
    # read-only scan of the committed files
    assert list(LogScan(OS_FS, str(V1_WAL)).records()) == expected
    # and through the writer's recovery, on a copy
    copy = tmp_path / "wal"
    shutil.copytree(V1_WAL, copy)
    with Log.open(str(copy), mode="absolute") as log:
        assert log.recovery == []
        assert log.epoch == EPOCH
        assert (log.first_lsn, log.anchor) == (1, b"")
        assert list(log.read()) == expected
        assert log.append(b"appended by version 2") == 8  # a v1 log goes on as v2
    with Log.open(str(copy)) as log:
        assert [r.lsn for r in log.read()] == list(range(1, 9))
    # the payloads are the msgspec MessagePack documents of the generator
    assert expected[0].decode() == {"step": "fetch", "status": "started", "attempt": 1}
    assert all(isinstance(msgspec.msgpack.decode(r.payload), dict) for r in expected)


def test_committed_v2_fixture_reads_back_from_start(tmp_path: Path) -> None:
    expected = expected_records(FIXTURE_DIR)
    assert [r.lsn for r in expected] == [6, 7]
    assert sorted(os.listdir(V2_WAL)) == [SEG2_NAME, "START"]
    scan = LogScan(OS_FS, str(V2_WAL))
    assert list(scan.records()) == expected
    assert scan.first_lsn == DISCARD_BEFORE
    copy = tmp_path / "wal"
    shutil.copytree(V2_WAL, copy)
    with Log.open(str(copy), mode="absolute") as log:
        assert log.recovery == []
        assert log.epoch == EPOCH
        assert (log.first_lsn, log.anchor) == (DISCARD_BEFORE, ANCHOR)
        assert list(log.read()) == expected
        with pytest.raises(NotFoundError):
            log.read_at(5)
    # the records are those of the v1 log from the discard point on
    assert expected == [r for r in expected_records(V1_DIR) if r.lsn >= DISCARD_BEFORE]


# -- (b) regenerating gives the same bytes (current version only) --------------------------------
def test_regenerating_v2_gives_identical_bytes(tmp_path: Path) -> None:
    # Depends on the zstd/lz4 versions compressing identically: see the module docstring.
    names = generate(tmp_path)
    assert names == [SEG2_NAME, "START"]
    assert sorted(os.listdir(tmp_path / "wal")) == names  # nothing but START and the segment
    for name in names:
        assert (tmp_path / "wal" / name).read_bytes() == (V2_WAL / name).read_bytes(), name
    assert (tmp_path / "records.json").read_bytes() == (FIXTURE_DIR / "records.json").read_bytes()


def test_generator_writes_what_the_records_json_files_list(tmp_path: Path) -> None:
    written = write_golden_log(str(tmp_path / "wal"))
    # every record appended is the v1 log's; the v2 fixture keeps those from the discard on
    assert records_json(written) == (V1_DIR / "records.json").read_text(encoding="utf-8")
    kept = [r for r in written if r[0] >= DISCARD_BEFORE]
    assert records_json(kept) == (FIXTURE_DIR / "records.json").read_text(encoding="utf-8")


# -- (c) the bytes match the tables -------------------------------------------------------------
def check_segment_header(data: bytes, *, version: int, seq: int, first_lsn: int) -> None:
    """§2.1, field by field."""
    assert data[0:8] == b"WFSTWAL\x00"  # magic
    assert struct.unpack_from("<H", data, 8)[0] == version  # format_version
    assert struct.unpack_from("<H", data, 10)[0] == 64  # header_size
    assert struct.unpack_from("<I", data, 12)[0] == 0  # flags
    assert struct.unpack_from("<Q", data, 16)[0] == EPOCH  # epoch
    assert struct.unpack_from("<Q", data, 24)[0] == seq  # seq, as in the file name
    assert struct.unpack_from("<Q", data, 32)[0] == first_lsn  # first_lsn, as in the name
    assert struct.unpack_from("<Q", data, 48)[0] == 0  # reserved
    assert struct.unpack_from("<Q", data, 56)[0] == xxh3(data[:56])  # header_checksum


def walk_records(data: bytes, *, seed: int, lsn: int, expected: dict[int, Record]) -> set[int]:
    """§3: every field of every record of a segment, and the chain; returns the codecs met."""
    assert struct.unpack_from("<Q", data, 40)[0] == seed  # prev_checksum: the chain seed
    codecs = set()
    p = 64
    while p < len(data):
        assert p % 8 == 0
        checksum, r_lsn, length, raw_length = struct.unpack_from("<QQII", data, p)
        rtype, codec, flags, reserved1 = data[p + 24 : p + 28]
        assert r_lsn == lsn
        assert rtype == expected[lsn].type == 1
        assert codec in (0, 1, 2)
        assert flags == 0x01  # AFTER_SYNC: durability "always", one record per group
        assert reserved1 == 0 and struct.unpack_from("<I", data, p + 28)[0] == 0
        assert raw_length == len(expected[lsn].payload)
        end = p + 32 + pad8(length)
        assert data[p + 32 + length : end] == bytes(end - p - 32 - length)  # zero padding
        assert checksum == xxh3(data[p + 8 : end], seed)
        if codec == 0:
            assert data[p + 32 : p + 32 + length] == expected[lsn].payload
        codecs.add(codec)
        seed, lsn, p = checksum, lsn + 1, end
    assert p == len(data)
    return codecs


def test_v1_fixture_bytes_match_the_format_tables() -> None:
    seg1, seg2 = (V1_WAL / SEG1_NAME).read_bytes(), (V1_WAL / SEG2_NAME).read_bytes()
    genesis = xxh3(struct.pack("<Q", EPOCH))
    check_segment_header(seg1, version=1, seq=1, first_lsn=1)
    check_segment_header(seg2, version=1, seq=2, first_lsn=6)
    assert struct.unpack_from("<Q", seg1, 40)[0] == genesis  # prev_checksum of segment 1

    expected = {r.lsn: r for r in expected_records(V1_DIR)}
    codecs = walk_records(seg1, seed=genesis, lsn=1, expected=expected)
    # the chain crosses segments: segment 2 is seeded with the checksum of record 5
    p, seed = 64, genesis
    while p < len(seg1):
        seed = struct.unpack_from("<Q", seg1, p)[0]
        p += 32 + pad8(struct.unpack_from("<I", seg1, p + 16)[0])
    codecs |= walk_records(seg2, seed=seed, lsn=6, expected=expected)
    assert codecs == {0, 1, 2}

    # a few absolute offsets, as the tables place them
    assert struct.unpack_from("<Q", seg1, 64 + 8)[0] == 1  # first record's lsn
    assert struct.unpack_from("<I", seg1, 64 + 16)[0] == 36  # its length
    assert seg1[64 + 24] == 1  # its type (DATA)
    assert seg1[64 + 25] == 0  # its codec: below the threshold, stored as is
    assert seg1[96 : 96 + 36] == expected[1].payload  # payload at 64 + 32
    assert seg1[136 + 25] == 2  # record 2 at 64 + 32 + pad8(36) = 136 is zstd
    assert seg1[136 + 32 : 136 + 36] == b"\x28\xb5\x2f\xfd"  # a zstd frame's magic number
    assert struct.unpack_from("<Q", seg2, 64 + 8)[0] == 6  # segment 2 starts at LSN 6


def test_v2_fixture_bytes_match_the_format_tables() -> None:
    seg2 = (V2_WAL / SEG2_NAME).read_bytes()
    start = (V2_WAL / "START").read_bytes()
    check_segment_header(seg2, version=2, seq=2, first_lsn=6)
    # segment and record layouts are the same in both versions: only the version field differs
    v1_seg2 = (V1_WAL / SEG2_NAME).read_bytes()
    assert seg2[64:] == v1_seg2[64:] and seg2[16:56] == v1_seg2[16:56]
    prev_checksum = struct.unpack_from("<Q", seg2, 40)[0]
    expected = {r.lsn: r for r in expected_records(FIXTURE_DIR)}
    walk_records(seg2, seed=prev_checksum, lsn=6, expected=expected)

    # §2.2 START, field by field
    assert len(start) == 64 + len(ANCHOR)  # exactly 64 + anchor_length bytes
    assert start[0:8] == b"WFSTSTRT"  # magic
    assert struct.unpack_from("<H", start, 8)[0] == 2  # format_version
    assert struct.unpack_from("<H", start, 10)[0] == 64  # header_size
    assert struct.unpack_from("<I", start, 12)[0] == len(ANCHOR)  # anchor_length
    assert struct.unpack_from("<Q", start, 16)[0] == EPOCH  # epoch, as every segment's
    assert struct.unpack_from("<Q", start, 24)[0] == 2  # seq: the first segment of the log
    assert struct.unpack_from("<Q", start, 32)[0] == DISCARD_BEFORE  # that segment's first_lsn
    assert struct.unpack_from("<Q", start, 40)[0] == prev_checksum  # that segment's chain seed
    assert struct.unpack_from("<Q", start, 48)[0] == xxh3(ANCHOR)  # anchor_checksum
    assert struct.unpack_from("<Q", start, 56)[0] == xxh3(start[:56])  # header_checksum
    assert start[64:] == ANCHOR  # the anchor, after the header
