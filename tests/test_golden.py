"""The committed golden fixtures pin the bytes of each format version (docs/format.md §7).

For every version ``v<N>``: (a) the committed files read back as exactly ``records.json``;
(c) byte offsets of the committed files match the tables of docs/format.md, decoded here with
``struct``, ``xxhash`` and ``zstandard`` only, not with ``wfstate.format``. For the current
version (v3) also: (b) generating the fixture again gives byte-identical files. v1 and v2 are
never regenerated: the current reader must read them as committed. v3 pins segment
dictionaries (§2.1.1): a segment carrying a trained dictionary, records stored with codec 3,
and a later segment inheriting the dictionary.

v2 and v3 also pin checkpoints (docs/format.md §9): the files ``checkpoints/`` of a full and an
incremental checkpoint, and the payloads of the ``CHECKPOINT``, ``CHECKPOINT_DROP`` and
``DISCARD`` records, with (a) and (c) for both and (b) for v3.

If (b) fails after a dependency upgrade while (a) and (c) pass, the zstd or lz4 library now
compresses the same payload to different bytes: the format did not change (the reader still
reads the old bytes, (a) proves it), so update the pinned library versions or regenerate the
fixture on purpose. If (a) or (c) fails, the on-disk format changed: bump FORMAT_VERSION. One
exception: the golden child state is derived with ``wfstate.mutations.apply``; if the
incremental checkpoint still yields a state with its header's ``state_checksum`` but not
``child_state()``, the mutations changed, not the format (regenerate on purpose).
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
import zstandard

from fixtures.golden import (
    ANCHOR,
    CHECKPOINTS_DIR,
    DISCARD_BEFORE,
    DISCARD_FILE,
    DROP_FILE,
    ENTRY_FILES,
    EPOCH,
    EXPECTED_FILE,
    FIXTURE_DIR,
    FULL_ID,
    FULL_LSN,
    INCREMENTAL_ID,
    INCREMENTAL_LSN,
    ORIGIN,
    V1_DIR,
    V2_DIR,
    WORKFLOW_ID,
    checkpoint_anchor,
    checkpoint_entries,
    checkpoint_fixture,
    child_state,
    generate,
    generate_checkpoints,
    parent_state,
    records_json,
    write_golden_log,
)
from wfstate.checkpointfile import decode_checkpoint, yielded_state
from wfstate.checkpointindex import decode_anchor, decode_drop, decode_entry
from wfstate.errors import NotFoundError
from wfstate.fs import OS_FS
from wfstate.model import state_checksum
from wfstate.statetable import stamped_with
from wfstate.wal import Log, LogScan, Record

SEG1_NAME = "0000000000000001-0000000000000001.wal"
SEG2_NAME = "0000000000000002-0000000000000006.wal"
V1_WAL = V1_DIR / "wal"
V2_WAL = V2_DIR / "wal"
V3_WAL = FIXTURE_DIR / "wal"
V3_SEGMENTS = [
    SEG2_NAME,
    "0000000000000003-0000000000000014.wal",
    "0000000000000004-0000000000000017.wal",  # the dictionary rotation
    "0000000000000005-000000000000003a.wal",  # a full segment's successor: inherits it
]
V2_CHECKPOINTS = V2_DIR / "checkpoints"
FULL_FILE = f"{FULL_ID}.ckpt"
INCREMENTAL_FILE = f"{INCREMENTAL_ID}.ckpt"
CHECKPOINT_FIXTURE_FILES = sorted(
    [FULL_FILE, INCREMENTAL_FILE, *ENTRY_FILES.values(), DROP_FILE, DISCARD_FILE, EXPECTED_FILE]
)
# docs/format.md §9.1: the payload map of a checkpoint file, keys in sorted order
FULL_PAYLOAD_KEYS = ["id", "origin", "parent", "state", "v", "workflow_id"]
INCREMENTAL_PAYLOAD_KEYS = ["delta", "id", "origin", "parent", "v", "workflow_id"]
# §9.2: the keys a delta may hold (metadata and workflow always)
DELTA_KEYS = {
    "metadata",
    "workflow",
    "steps",
    "step_ids",
    "agents",
    "agents_removed",
    "outputs",
    "outputs_removed",
    "context",
    "performance",
}
# §9.3: the CHECKPOINT payload
ENTRY_KEYS = {
    "v",
    "id",
    "workflow_id",
    "origin",
    "lsn",
    "parent",
    "session_id",
    "type",
    "tags",
    "description",
    "file",
    "size",
    "checksum",
    "created",
}
CHECKPOINT_TYPES = {"manual", "automatic", "pre_step", "post_step", "error", "compaction"}


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
        assert log.append(b"appended by version 3") == 8  # a v1 log goes on as v3
    with Log.open(str(copy)) as log:
        assert [r.lsn for r in log.read()] == list(range(1, 9))
    # the payloads are the msgspec MessagePack documents of the generator
    assert expected[0].decode() == {"step": "fetch", "status": "started", "attempt": 1}
    assert all(isinstance(msgspec.msgpack.decode(r.payload), dict) for r in expected)


def test_committed_v2_fixture_reads_back_from_start(tmp_path: Path) -> None:
    expected = expected_records(V2_DIR)
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


def test_committed_v3_fixture_reads_back_with_its_dictionaries(tmp_path: Path) -> None:
    expected = expected_records(FIXTURE_DIR)
    assert [r.lsn for r in expected] == list(range(DISCARD_BEFORE, DISCARD_BEFORE + 66))
    assert sorted(os.listdir(V3_WAL)) == [*V3_SEGMENTS, "START"]
    scan = LogScan(OS_FS, str(V3_WAL))
    assert list(scan.records()) == expected
    assert scan.damage == []
    copy = tmp_path / "wal"
    shutil.copytree(V3_WAL, copy)
    with Log.open(str(copy), mode="absolute") as log:
        assert log.recovery == []
        assert (log.epoch, log.first_lsn, log.anchor) == (EPOCH, DISCARD_BEFORE, ANCHOR)
        assert list(log.read()) == expected
        assert all(log.read_at(r.lsn) == r for r in expected)  # by position, dictionary too
        # the writer taking over goes on with the last segment's dictionary: codec 3
        payload = expected[-1].payload
        lsn = log.append(payload)
    with Log.open(str(copy)) as log:
        assert list(log.read())[-1] == Record(lsn, 1, payload)
    seg5 = (copy / V3_SEGMENTS[-1]).read_bytes()
    assert (
        seg5[: len((V3_WAL / V3_SEGMENTS[-1]).read_bytes())]
        == (V3_WAL / V3_SEGMENTS[-1]).read_bytes()
    )
    assert [h.codec for s, _o, h in LogScan(OS_FS, str(copy)).headers() if h.lsn == lsn] == [3]
    # the records up to the discard's are those of the v2 log
    assert expected[:2] == expected_records(V2_DIR)


# -- (b) regenerating gives the same bytes (current version only) --------------------------------
def test_regenerating_v3_gives_identical_bytes(tmp_path: Path) -> None:
    # Depends on the zstd/lz4 versions compressing (and training) identically: see the
    # module docstring.
    names = generate(tmp_path)
    assert names == [*V3_SEGMENTS, "START"]
    assert sorted(os.listdir(tmp_path / "wal")) == names  # nothing but START and the segments
    for name in names:
        assert (tmp_path / "wal" / name).read_bytes() == (V3_WAL / name).read_bytes(), name
    assert (tmp_path / "records.json").read_bytes() == (FIXTURE_DIR / "records.json").read_bytes()


def test_generator_writes_what_the_records_json_files_list(tmp_path: Path) -> None:
    written = write_golden_log(str(tmp_path / "wal"))
    # the first 7 records appended are the v1 log's; v2 keeps those from the discard on, v3
    # those and the dictionary part
    assert records_json(written[:7]) == (V1_DIR / "records.json").read_text(encoding="utf-8")
    kept = [r for r in written if r[0] >= DISCARD_BEFORE]
    assert records_json(kept[:2]) == (V2_DIR / "records.json").read_text(encoding="utf-8")
    assert records_json(kept) == (FIXTURE_DIR / "records.json").read_text(encoding="utf-8")


# -- (c) the bytes match the tables -------------------------------------------------------------
def check_segment_header(
    data: bytes, *, version: int, seq: int, first_lsn: int, header_size: int = 64
) -> None:
    """§2.1, field by field (a dictionary block, if any, is the caller's to check)."""
    assert data[0:8] == b"WFSTWAL\x00"  # magic
    assert struct.unpack_from("<H", data, 8)[0] == version  # format_version
    assert struct.unpack_from("<H", data, 10)[0] == header_size  # header_size
    flags = 0 if header_size == 64 else 1  # bit 0 HAS_DICTIONARY
    assert struct.unpack_from("<I", data, 12)[0] == flags  # flags
    assert struct.unpack_from("<Q", data, 16)[0] == EPOCH  # epoch
    assert struct.unpack_from("<Q", data, 24)[0] == seq  # seq, as in the file name
    assert struct.unpack_from("<Q", data, 32)[0] == first_lsn  # first_lsn, as in the name
    assert struct.unpack_from("<Q", data, 48)[0] == 0  # reserved
    assert struct.unpack_from("<Q", data, 56)[0] == xxh3(data[:56])  # header_checksum


def walk_records(
    data: bytes,
    *,
    seed: int,
    lsn: int,
    expected: dict[int, Record],
    dictionary: bytes | None = None,
) -> set[int]:
    """§3: every field of every record of a segment, and the chain; returns the codecs met.
    With a ``dictionary`` (the segment's), codec-3 payloads must decode with it to the
    expected payload."""
    assert struct.unpack_from("<Q", data, 40)[0] == seed  # prev_checksum: the chain seed
    codecs = set()
    p = struct.unpack_from("<H", data, 10)[0]  # header_size: where the records start
    while p < len(data):
        assert p % 8 == 0
        checksum, r_lsn, length, raw_length = struct.unpack_from("<QQII", data, p)
        rtype, codec, flags, reserved1 = data[p + 24 : p + 28]
        assert r_lsn == lsn
        assert rtype == expected[lsn].type == 1
        assert codec in ((0, 1, 2, 3) if dictionary is not None else (0, 1, 2))
        assert flags == 0x01  # AFTER_SYNC: durability "always", one record per group
        assert reserved1 == 0 and struct.unpack_from("<I", data, p + 28)[0] == 0
        assert raw_length == len(expected[lsn].payload)
        end = p + 32 + pad8(length)
        assert data[p + 32 + length : end] == bytes(end - p - 32 - length)  # zero padding
        assert checksum == xxh3(data[p + 8 : end], seed)
        stored = data[p + 32 : p + 32 + length]
        if codec == 0:
            assert stored == expected[lsn].payload
        if codec == 3:
            assert dictionary is not None
            zdict = zstandard.ZstdCompressionDict(dictionary)
            decompressor = zstandard.ZstdDecompressor(dict_data=zdict)
            assert decompressor.decompress(stored, max_output_size=raw_length) == (
                expected[lsn].payload
            )
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


def check_start(start: bytes, *, version: int, prev_checksum: int) -> None:
    """§2.2 START, field by field."""
    assert len(start) == 64 + len(ANCHOR)  # exactly 64 + anchor_length bytes
    assert start[0:8] == b"WFSTSTRT"  # magic
    assert struct.unpack_from("<H", start, 8)[0] == version  # format_version
    assert struct.unpack_from("<H", start, 10)[0] == 64  # header_size
    assert struct.unpack_from("<I", start, 12)[0] == len(ANCHOR)  # anchor_length
    assert struct.unpack_from("<Q", start, 16)[0] == EPOCH  # epoch, as every segment's
    assert struct.unpack_from("<Q", start, 24)[0] == 2  # seq: the first segment of the log
    assert struct.unpack_from("<Q", start, 32)[0] == DISCARD_BEFORE  # that segment's first_lsn
    assert struct.unpack_from("<Q", start, 40)[0] == prev_checksum  # that segment's chain seed
    assert struct.unpack_from("<Q", start, 48)[0] == xxh3(ANCHOR)  # anchor_checksum
    assert struct.unpack_from("<Q", start, 56)[0] == xxh3(start[:56])  # header_checksum
    assert start[64:] == ANCHOR  # the anchor, after the header


def test_v2_fixture_bytes_match_the_format_tables() -> None:
    seg2 = (V2_WAL / SEG2_NAME).read_bytes()
    check_segment_header(seg2, version=2, seq=2, first_lsn=6)
    # segment and record layouts are the same in both versions: only the version field differs
    v1_seg2 = (V1_WAL / SEG2_NAME).read_bytes()
    assert seg2[64:] == v1_seg2[64:] and seg2[16:56] == v1_seg2[16:56]
    prev_checksum = struct.unpack_from("<Q", seg2, 40)[0]
    expected = {r.lsn: r for r in expected_records(V2_DIR)}
    walk_records(seg2, seed=prev_checksum, lsn=6, expected=expected)
    check_start((V2_WAL / "START").read_bytes(), version=2, prev_checksum=prev_checksum)


def check_dictionary_block(data: bytes) -> bytes:
    """§2.1.1, field by field; returns the dictionary."""
    length, reserved, dict_checksum = struct.unpack_from("<IIQ", data, 64)
    assert 1 <= length <= 1 << 20 and reserved == 0
    assert struct.unpack_from("<H", data, 10)[0] == 80 + pad8(length)  # header_size
    dictionary = data[80 : 80 + length]
    header_checksum = struct.unpack_from("<Q", data, 56)[0]
    assert dict_checksum == xxh3(dictionary, header_checksum)  # seeded: not portable
    assert data[80 + length : 80 + pad8(length)] == bytes(pad8(length) - length)  # zero padding
    assert dictionary[:4] == b"\x37\xa4\x30\xec"  # a zstd dictionary's magic number
    return dictionary


def test_v3_fixture_bytes_match_the_format_tables() -> None:
    segments = [(V3_WAL / name).read_bytes() for name in V3_SEGMENTS]
    expected = {r.lsn: r for r in expected_records(FIXTURE_DIR)}
    dictionaries: list[bytes | None] = [None, None]
    for data in segments[2:]:
        dictionaries.append(check_dictionary_block(data))
    seed, lsn = struct.unpack_from("<Q", segments[0], 40)[0], DISCARD_BEFORE
    met: list[set[int]] = []
    for i, (name, data) in enumerate(zip(V3_SEGMENTS, segments, strict=True)):
        first_lsn = int(name[17:33], 16)
        size = 64 if dictionaries[i] is None else 80 + pad8(len(dictionaries[i] or b""))
        check_segment_header(data, version=3, seq=2 + i, first_lsn=first_lsn, header_size=size)
        assert first_lsn == lsn  # the chain crosses segments
        met.append(
            walk_records(data, seed=seed, lsn=lsn, expected=expected, dictionary=dictionaries[i])
        )
        p = size
        while p < len(data):
            seed = struct.unpack_from("<Q", data, p)[0]
            lsn = struct.unpack_from("<Q", data, p + 8)[0] + 1
            p += 32 + pad8(struct.unpack_from("<I", data, p + 16)[0])
    assert lsn == max(expected) + 1
    # the dictionary segment holds codec-3 records (and a zstd one, compressed before the
    # rotation: valid anywhere); its successor inherits the same dictionary bytes, under
    # another dict_checksum (seeded by its own header)
    assert 3 in met[2] and met[3] == {3} and 3 not in met[0] | met[1]
    assert dictionaries[2] == dictionaries[3]
    assert segments[2][72:80] != segments[3][72:80]
    # without a dictionary, version 3 is version 2's layout: segment 2 begins with v2's records
    v2_seg2 = (V2_WAL / SEG2_NAME).read_bytes()
    assert segments[0][64 : len(v2_seg2)] == v2_seg2[64:]
    assert segments[0][10:56] == v2_seg2[10:56]
    prev_checksum = struct.unpack_from("<Q", segments[0], 40)[0]
    check_start((V3_WAL / "START").read_bytes(), version=3, prev_checksum=prev_checksum)


# -- checkpoints (docs/format.md §9) -------------------------------------------------------------
CHECKPOINT_VERSIONS = pytest.mark.parametrize(
    ("directory", "version"), [(V2_CHECKPOINTS, 2), (CHECKPOINTS_DIR, 3)], ids=["v2", "v3"]
)


def committed(name: str, directory: Path = CHECKPOINTS_DIR) -> bytes:
    return (directory / name).read_bytes()


def expected_checkpoints(directory: Path = CHECKPOINTS_DIR) -> dict[str, dict[str, object]]:
    document = json.loads(committed(EXPECTED_FILE, directory))
    assert document["epoch"] == f"{EPOCH:#018x}"
    checkpoints: dict[str, dict[str, object]] = document["checkpoints"]
    return checkpoints


# (a) the committed files read back
@CHECKPOINT_VERSIONS
def test_committed_checkpoint_files_decode_to_the_generator_states(
    directory: Path, version: int
) -> None:
    assert sorted(os.listdir(directory)) == CHECKPOINT_FIXTURE_FILES
    parent, child = parent_state(), child_state()

    full_path = str(directory / FULL_FILE)
    full = decode_checkpoint(committed(FULL_FILE, directory), full_path, epoch=EPOCH)
    assert (full.checkpoint_id, full.workflow_id, full.origin, full.lsn) == (
        FULL_ID,
        WORKFLOW_ID,
        ORIGIN,
        FULL_LSN,
    )
    assert (full.kind, full.parent, full.delta) == (1, None, None)
    # a full checkpoint stores its state without the LSN stamp (the store puts it back)
    assert full.state is not None and full.state.metadata.last_lsn == 0
    assert full.state == stamped_with(parent, 0)
    assert full.state_checksum == state_checksum(parent)
    assert yielded_state(full, None, full_path) == full.state

    incremental_path = str(directory / INCREMENTAL_FILE)
    incremental = decode_checkpoint(
        committed(INCREMENTAL_FILE, directory), incremental_path, epoch=EPOCH
    )
    assert (incremental.checkpoint_id, incremental.workflow_id) == (INCREMENTAL_ID, WORKFLOW_ID)
    assert (incremental.origin, incremental.lsn) == (ORIGIN, INCREMENTAL_LSN)
    assert (incremental.kind, incremental.parent, incremental.state) == (2, FULL_ID, None)
    assert incremental.delta is not None
    # yielded_state checks the header's state_checksum: the delta applies to the full state
    yielded = yielded_state(incremental, stamped_with(full.state, FULL_LSN), incremental_path)
    assert incremental.state_checksum == state_checksum(yielded)
    assert yielded == child  # see the module docstring if only this fails

    # the header fields, as expected.json lists them
    expected = expected_checkpoints(directory)
    for decoded, state in ((full, parent), (incremental, child)):
        fields = expected[decoded.checkpoint_id]
        assert fields["size"] == decoded.size
        assert fields["lsn"] == decoded.lsn and fields["kind"] == decoded.kind
        assert fields["header_checksum"] == f"{decoded.header_checksum:#018x}"
        assert fields["state_checksum"] == f"{decoded.state_checksum:#018x}"
        assert fields["yields_state_checksum"] == f"{state_checksum(state):#018x}"


@CHECKPOINT_VERSIONS
def test_committed_checkpoint_payloads_decode_to_the_entries_and_anchor(
    directory: Path, version: int
) -> None:
    generated = checkpoint_entries()
    # an entry names its file's header checksum, which covers the file's format version
    full_entry, incremental_entry = (
        msgspec.structs.replace(
            entry,
            checksum=decode_checkpoint(
                committed(entry.file, directory), entry.file, epoch=EPOCH
            ).header_checksum,
        )
        for entry in generated
    )
    if version == 3:  # the current version: exactly what the generator makes
        assert (full_entry, incremental_entry) == generated
    assert decode_entry(committed(ENTRY_FILES[FULL_ID], directory)) == full_entry
    assert decode_entry(committed(ENTRY_FILES[INCREMENTAL_ID], directory)) == incremental_entry
    assert decode_drop(committed(DROP_FILE, directory)) == (FULL_ID, INCREMENTAL_ID)
    anchor = decode_anchor(committed(DISCARD_FILE, directory))
    generated_anchor = checkpoint_anchor()
    assert anchor.workflows == generated_anchor.workflows
    assert [(w.workflow_id, w.origin, w.floor) for w in anchor.workflows] == [
        (WORKFLOW_ID, ORIGIN, INCREMENTAL_LSN)
    ]
    assert anchor.checkpoints == (full_entry, incremental_entry)
    # each entry names its committed file: its name, size and header checksum
    for entry in (full_entry, incremental_entry):
        data = committed(entry.file, directory)
        decoded = decode_checkpoint(data, entry.file, epoch=EPOCH)
        assert (entry.size, entry.checksum) == (len(data), decoded.header_checksum)
        assert (entry.id, entry.parent, entry.lsn) == (
            decoded.checkpoint_id,
            decoded.parent,
            decoded.lsn,
        )
    assert (full_entry.parent, incremental_entry.parent) == (None, FULL_ID)


# (b) regenerating gives the same bytes
def test_regenerating_checkpoints_gives_identical_bytes(tmp_path: Path) -> None:
    # Depends on the zstd version compressing identically: see the module docstring.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "stale.ckpt").write_bytes(b"left by an older generator")
    names = generate_checkpoints(tmp_path)
    assert names == CHECKPOINT_FIXTURE_FILES
    assert sorted(os.listdir(tmp_path / "checkpoints")) == names
    for name in names:
        assert (tmp_path / "checkpoints" / name).read_bytes() == committed(name), name
    assert checkpoint_fixture() == {name: committed(name) for name in names}


# (c) the bytes match the tables
@CHECKPOINT_VERSIONS
@pytest.mark.parametrize(
    ("name", "kind", "codec", "lsn"),
    [(FULL_FILE, 1, 2, FULL_LSN), (INCREMENTAL_FILE, 2, 0, INCREMENTAL_LSN)],
)
def test_checkpoint_file_bytes_match_the_format_tables(
    directory: Path, version: int, name: str, kind: int, codec: int, lsn: int
) -> None:
    data = committed(name, directory)
    # §9.1, field by field
    assert data[0:8] == b"WFSTCKPT"  # magic
    assert struct.unpack_from("<H", data, 8)[0] == version  # format_version
    assert struct.unpack_from("<H", data, 10)[0] == 64  # header_size
    assert data[12] == kind  # kind: 1 full, 2 incremental
    assert data[13] == codec  # codec: 0 none, 2 zstd frame
    assert struct.unpack_from("<H", data, 14)[0] == 0  # reserved
    assert struct.unpack_from("<Q", data, 16)[0] == EPOCH  # epoch
    assert struct.unpack_from("<Q", data, 24)[0] == lsn  # lsn
    length, raw_length = struct.unpack_from("<II", data, 32)  # length, raw_length
    stored = data[64:]
    assert len(data) == 64 + length  # the file is exactly 64 + length bytes
    assert 1 <= length <= 1 << 30 and 1 <= raw_length <= 1 << 30
    assert struct.unpack_from("<Q", data, 40)[0] == xxh3(stored)  # payload_checksum
    state_sum = struct.unpack_from("<Q", data, 48)[0]  # state_checksum
    assert struct.unpack_from("<Q", data, 56)[0] == xxh3(data[:56])  # header_checksum

    fields = expected_checkpoints(directory)[name.removesuffix(".ckpt")]
    assert (fields["kind"], fields["codec"], fields["lsn"]) == (kind, codec, lsn)
    assert (fields["length"], fields["raw_length"], fields["size"]) == (
        length,
        raw_length,
        len(data),
    )
    assert fields["payload_checksum"] == f"{xxh3(stored):#018x}"
    assert fields["state_checksum"] == fields["yields_state_checksum"] == f"{state_sum:#018x}"

    if codec == 0:
        assert raw_length == length
        raw = stored
    else:
        assert length < raw_length  # the full state compresses
        assert stored[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame's magic number
        raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_length)
    assert len(raw) == raw_length

    # the payload: one MessagePack map, the keys of §9.1 in sorted order
    payload = msgspec.msgpack.decode(raw)
    assert isinstance(payload, dict)
    assert list(payload) == (FULL_PAYLOAD_KEYS if kind == 1 else INCREMENTAL_PAYLOAD_KEYS)
    assert payload["v"] == 1  # SCHEMA_VERSION
    assert payload["id"] == name.removesuffix(".ckpt")
    assert payload["workflow_id"] == WORKFLOW_ID
    assert 1 <= payload["origin"] == ORIGIN <= lsn
    if kind == 1:
        assert payload["parent"] is None  # nil, written
        assert payload["state"]["workflow"]["id"] == WORKFLOW_ID
    else:
        assert payload["parent"] == FULL_ID
        delta = payload["delta"]  # §9.2: keys sorted, metadata and workflow always
        assert list(delta) == sorted(delta) and set(delta) <= DELTA_KEYS
        assert {"metadata", "workflow"} <= set(delta)
        assert "steps" not in delta["workflow"]  # the workflow without its steps
        assert [step["id"] for step in delta["steps"]] == ["summarize"]  # only the changed step
        assert "step_ids" not in delta  # the order and the set of steps are the parent's


@CHECKPOINT_VERSIONS
def test_checkpoint_record_payload_bytes_match_the_format_tables(
    directory: Path, version: int
) -> None:
    assert struct.unpack_from("<H", committed(FULL_FILE, directory), 8)[0] == version
    record_types = json.loads(committed(EXPECTED_FILE, directory))["record_types"]
    assert record_types == {  # §5: CHECKPOINT 3, CHECKPOINT_DROP 4, DISCARD 5
        ENTRY_FILES[FULL_ID]: 3,
        ENTRY_FILES[INCREMENTAL_ID]: 3,
        DROP_FILE: 4,
        DISCARD_FILE: 5,
    }
    entries = []
    for checkpoint_id, file, parent, lsn in (
        (FULL_ID, FULL_FILE, None, FULL_LSN),
        (INCREMENTAL_ID, INCREMENTAL_FILE, FULL_ID, INCREMENTAL_LSN),
    ):
        # §9.3, the CHECKPOINT payload: a map of exactly these keys (written sorted)
        entry = msgspec.msgpack.decode(committed(ENTRY_FILES[checkpoint_id], directory))
        assert isinstance(entry, dict)
        assert set(entry) == ENTRY_KEYS and list(entry) == sorted(entry)
        data = committed(file, directory)
        assert entry["v"] == 1
        assert entry["id"] == checkpoint_id
        assert (entry["workflow_id"], entry["origin"], entry["parent"]) == (
            WORKFLOW_ID,
            ORIGIN,
            parent,
        )
        assert entry["lsn"] == lsn == struct.unpack_from("<Q", data, 24)[0]  # as in the file
        assert entry["session_id"] == "session-7"
        assert entry["type"] in CHECKPOINT_TYPES
        assert all(isinstance(tag, str) for tag in entry["tags"])
        assert isinstance(entry["description"], str)
        assert entry["file"] == file
        assert entry["size"] == len(data)
        assert entry["checksum"] == struct.unpack_from("<Q", data, 56)[0]  # header_checksum
        assert isinstance(entry["created"], float)
        entries.append(entry)

    # §9.4, CHECKPOINT_DROP
    drop = msgspec.msgpack.decode(committed(DROP_FILE, directory))
    assert drop == {"v": 1, "ids": [FULL_ID, INCREMENTAL_ID]}
    assert list(drop) == ["ids", "v"]

    # §9.6, DISCARD: the anchor
    anchor = msgspec.msgpack.decode(committed(DISCARD_FILE, directory))
    assert isinstance(anchor, dict)
    assert list(anchor) == ["checkpoints", "v", "workflows"]
    assert anchor["v"] == 1
    # [workflow_id, origin, floor], sorted by id
    assert anchor["workflows"] == [[WORKFLOW_ID, ORIGIN, INCREMENTAL_LSN]]
    # the index, sorted by id: the entries, without their own `v` (the anchor's covers them)
    assert anchor["checkpoints"] == [
        {k: v for k, v in entry.items() if k != "v"}
        for entry in sorted(entries, key=lambda e: e["id"])
    ]
