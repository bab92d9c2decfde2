"""The committed golden fixture pins the bytes of format version 1 (docs/format.md §7).

(a) the committed segments read back as exactly ``records.json``; (b) generating the fixture
again gives byte-identical files; (c) byte offsets of the committed files match the tables of
docs/format.md, decoded here with ``struct`` and ``xxhash`` only, not with ``wfstate.format``.

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
import xxhash

from fixtures.golden import EPOCH, FIXTURE_DIR, generate, records_json, write_golden_log
from wfstate.fs import OS_FS
from wfstate.wal import Log, LogScan, Record

WAL = FIXTURE_DIR / "wal"
SEG1 = WAL / "0000000000000001-0000000000000001.wal"
SEG2 = WAL / "0000000000000002-0000000000000006.wal"


def expected_records() -> list[Record]:
    items = json.loads((FIXTURE_DIR / "records.json").read_text(encoding="utf-8"))
    return [Record(i["lsn"], i["type"], bytes.fromhex(i["payload"])) for i in items]


def pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def test_committed_fixture_reads_back_as_records_json(tmp_path: Path) -> None:
    expected = expected_records()
    assert [r.lsn for r in expected] == list(range(1, 8))
    assert sorted(os.listdir(WAL)) == [SEG1.name, SEG2.name]
    # read-only scan of the committed files
    assert list(LogScan(OS_FS, str(WAL)).records()) == expected
    # and through the writer's recovery, on a copy
    copy = tmp_path / "wal"
    shutil.copytree(WAL, copy)
    with Log.open(str(copy), mode="absolute") as log:
        assert log.recovery == []
        assert log.epoch == EPOCH
        assert list(log.read()) == expected
    # the payloads are the msgspec MessagePack documents of the generator
    assert expected[0].decode() == {"step": "fetch", "status": "started", "attempt": 1}
    assert all(isinstance(msgspec.msgpack.decode(r.payload), dict) for r in expected)


def test_regenerating_gives_identical_bytes(tmp_path: Path) -> None:
    # Depends on the zstd/lz4 versions compressing identically: see the module docstring.
    names = generate(tmp_path)
    assert names == [SEG1.name, SEG2.name]
    assert sorted(os.listdir(tmp_path / "wal")) == names  # nothing but the segments
    for name in names:
        assert (tmp_path / "wal" / name).read_bytes() == (WAL / name).read_bytes(), name
    assert (tmp_path / "records.json").read_bytes() == (FIXTURE_DIR / "records.json").read_bytes()


def test_generator_writes_what_records_json_lists(tmp_path: Path) -> None:
    written = write_golden_log(str(tmp_path / "wal"))
    assert records_json(written) == (FIXTURE_DIR / "records.json").read_text(encoding="utf-8")


def test_fixture_bytes_match_the_format_tables() -> None:
    seg1, seg2 = SEG1.read_bytes(), SEG2.read_bytes()
    genesis = xxhash.xxh3_64_intdigest(struct.pack("<Q", EPOCH), 0)

    # §2.1 segment header
    for data, seq, first_lsn in ((seg1, 1, 1), (seg2, 2, 6)):
        assert data[0:8] == b"WFSTWAL\x00"  # magic
        assert struct.unpack_from("<H", data, 8)[0] == 1  # format_version
        assert struct.unpack_from("<H", data, 10)[0] == 64  # header_size
        assert struct.unpack_from("<I", data, 12)[0] == 0  # flags
        assert struct.unpack_from("<Q", data, 16)[0] == EPOCH  # epoch
        assert struct.unpack_from("<Q", data, 24)[0] == seq  # seq, as in the file name
        assert struct.unpack_from("<Q", data, 32)[0] == first_lsn  # first_lsn, as in the name
        assert struct.unpack_from("<Q", data, 48)[0] == 0  # reserved
        assert struct.unpack_from("<Q", data, 56)[0] == xxhash.xxh3_64_intdigest(data[:56], 0)
    assert struct.unpack_from("<Q", seg1, 40)[0] == genesis  # prev_checksum of segment 1

    # §3 records: walk both segments by the table, checking every field and the chain
    expected = expected_records()
    seed = genesis
    lsn = 1
    codecs = set()
    for data in (seg1, seg2):
        assert struct.unpack_from("<Q", data, 40)[0] == seed  # the chain crosses segments
        p = 64
        while p < len(data):
            assert p % 8 == 0
            checksum, r_lsn, length, raw_length = struct.unpack_from("<QQII", data, p)
            rtype, codec, flags, reserved1 = data[p + 24 : p + 28]
            assert r_lsn == lsn
            assert rtype == expected[lsn - 1].type == 1
            assert codec in (0, 1, 2)
            assert flags == 0x01  # AFTER_SYNC: durability "always", one record per group
            assert reserved1 == 0 and struct.unpack_from("<I", data, p + 28)[0] == 0
            assert raw_length == len(expected[lsn - 1].payload)
            end = p + 32 + pad8(length)
            assert data[p + 32 + length : end] == bytes(end - p - 32 - length)  # zero padding
            assert checksum == xxhash.xxh3_64_intdigest(data[p + 8 : end], seed)
            if codec == 0:
                assert data[p + 32 : p + 32 + length] == expected[lsn - 1].payload
            codecs.add(codec)
            seed, lsn, p = checksum, lsn + 1, end
        assert p == len(data)
    assert lsn == 8
    assert codecs == {0, 1, 2}

    # a few absolute offsets, as the tables place them
    assert struct.unpack_from("<Q", seg1, 64 + 8)[0] == 1  # first record's lsn
    assert struct.unpack_from("<I", seg1, 64 + 16)[0] == 36  # its length
    assert seg1[64 + 24] == 1  # its type (DATA)
    assert seg1[64 + 25] == 0  # its codec: below the threshold, stored as is
    assert seg1[96 : 96 + 36] == expected[0].payload  # payload at 64 + 32
    assert seg1[136 + 25] == 2  # record 2 at 64 + 32 + pad8(36) = 136 is zstd
    assert seg1[136 + 32 : 136 + 36] == b"\x28\xb5\x2f\xfd"  # a zstd frame's magic number
    assert struct.unpack_from("<Q", seg2, 64 + 8)[0] == 6  # segment 2 starts at LSN 6
