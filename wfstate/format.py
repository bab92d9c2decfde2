"""Every on-disk constant and layout of wfstate, mirroring ``docs/format.md``.

The document is the specification; this module is its executable mirror. Sizes are asserted at
import so a layout edit that forgets the spec fails immediately. Nothing here does I/O: the
functions pack, unpack and name things, and the log modules decide what to do with them.
"""

from __future__ import annotations

import re
import struct
from typing import Final, NamedTuple

import xxhash

FORMAT_VERSION: Final = 3
READABLE_VERSIONS: Final = frozenset({1, 2, 3})
"""Segment header versions a reader accepts (docs/format.md §7: version 3 adds the dictionary
block, versions 1 and 2 have version 3's layout without one)."""
FILE_VERSIONS: Final = frozenset({2, 3})
"""Versions of ``START`` and checkpoint files a reader accepts (their layouts are the same)."""

# -- segment header (docs/format.md §2.1) ---------------------------------------------------
SEGMENT_MAGIC: Final = b"WFSTWAL\x00"
SEGMENT_HEADER = struct.Struct("<8sHHIQQQQQQ")
SEGMENT_HEADER_SIZE: Final = 64
assert SEGMENT_HEADER.size == SEGMENT_HEADER_SIZE
SEGMENT_HEADER_CHECKED: Final = 56  # header_checksum covers bytes 0..55
SEGMENT_HAS_DICTIONARY: Final = 0x1  # flags bit 0 (version 3)
DICTIONARY_BLOCK = struct.Struct("<IIQ")  # dict_length, reserved, dict_checksum (§2.1.1)
DICTIONARY_BLOCK_SIZE: Final = 16
assert DICTIONARY_BLOCK.size == DICTIONARY_BLOCK_SIZE
MAX_DICTIONARY: Final = 65448
"""The largest ``dict_length``: ``header_size`` (2 bytes) must hold ``80 + pad8(dict_length)``."""
assert SEGMENT_HEADER_SIZE + DICTIONARY_BLOCK_SIZE + MAX_DICTIONARY <= 0xFFFF
MAX_SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER_SIZE + DICTIONARY_BLOCK_SIZE + MAX_DICTIONARY

# -- record header (docs/format.md §3) --------------------------------------------------------
RECORD_HEADER = struct.Struct("<QQIIBBBBI")
RECORD_HEADER_SIZE: Final = 32
assert RECORD_HEADER.size == RECORD_HEADER_SIZE
RECORD_ALIGN: Final = 8
MAX_PAYLOAD: Final = 1 << 30
ZERO_RECORD_HEADER: Final = bytes(RECORD_HEADER_SIZE)

CODEC_NONE: Final = 0
CODEC_LZ4: Final = 1
CODEC_ZSTD: Final = 2
CODEC_ZSTD_DICT: Final = 3  # zstd with the segment's dictionary (§2.1.1)
CODECS: Final = frozenset({CODEC_NONE, CODEC_LZ4, CODEC_ZSTD})
"""The codecs valid in any segment (and in checkpoint files)."""
DICTIONARY_CODECS: Final = CODECS | {CODEC_ZSTD_DICT}
"""The codecs valid in a segment that has a dictionary."""

FLAG_AFTER_SYNC: Final = 0x01
KNOWN_FLAGS: Final = FLAG_AFTER_SYNC

# -- record types (docs/format.md §5) ---------------------------------------------------------
RECORD_DATA: Final = 1
RECORD_BATCH: Final = 2
RECORD_CHECKPOINT: Final = 3
RECORD_CHECKPOINT_DROP: Final = 4
RECORD_DISCARD: Final = 5
RECORD_TXN: Final = 6
RECORD_SESSION: Final = 7

# -- the durability hint in LOCK (docs/format.md §8.1) -----------------------------------------
LOCK_FILE: Final = "LOCK"
HINT_MAGIC: Final = b"WFSHINT1"
HINT_POISONED_MAGIC: Final = b"WFSHINTP"
HINT = struct.Struct("<8sQQQ")
HINT_SIZE: Final = 32
assert HINT.size == HINT_SIZE
HINT_CHECKED: Final = 24  # check covers bytes 0..23


class DurabilityHint(NamedTuple):
    """An intact hint of the right epoch: every record up to ``durable_lsn`` is durable;
    ``poisoned``: a sync failed after it, so later records are not to be trusted (§8.1)."""

    durable_lsn: int
    poisoned: bool


def pack_hint(epoch: int, durable_lsn: int, *, poisoned: bool = False) -> bytes:
    """The durability hint saying every record up to ``durable_lsn`` of ``epoch`` is synced
    (``poisoned``: and that a sync of later records failed)."""
    magic = HINT_POISONED_MAGIC if poisoned else HINT_MAGIC
    head = HINT.pack(magic, epoch, durable_lsn, 0)[:HINT_CHECKED]
    return head + xxh3(head).to_bytes(8, "little")


def read_hint(buf: bytes, epoch: int) -> DurabilityHint | None:
    """The hint in ``buf`` for ``epoch``; None if it is absent, damaged or foreign."""
    if len(buf) < HINT_SIZE:
        return None
    magic, hint_epoch, durable_lsn, check = HINT.unpack_from(buf, 0)
    if magic not in (HINT_MAGIC, HINT_POISONED_MAGIC):
        return None
    if check != xxh3(buf[:HINT_CHECKED]) or hint_epoch != epoch:
        return None
    return DurabilityHint(int(durable_lsn), magic == HINT_POISONED_MAGIC)


def unpack_hint(buf: bytes, epoch: int) -> int | None:
    """The durable LSN a hint names for ``epoch`` (poisoned or not); None if it is absent,
    damaged or foreign."""
    hint = read_hint(buf, epoch)
    return None if hint is None else hint.durable_lsn


# -- the log start, wal/START (docs/format.md §2.2) -------------------------------------------
START_FILE: Final = "START"
START_MAGIC: Final = b"WFSTSTRT"
START_HEADER = struct.Struct("<8sHHIQQQQQQ")
START_HEADER_SIZE: Final = 64
assert START_HEADER.size == START_HEADER_SIZE
START_HEADER_CHECKED: Final = 56  # header_checksum covers bytes 0..55
START_MIN_SEQ: Final = 2  # START never names segment 1: that is the log without a START


class LogStart(NamedTuple):
    """The content of ``wal/START``: where the log starts, and the anchor standing in for the
    records before it (docs/format.md §2.2). ``seq``, ``first_lsn`` and ``prev_checksum`` are
    those of the first segment of the log."""

    epoch: int
    seq: int
    first_lsn: int
    prev_checksum: int
    anchor: bytes


def pack_start(start: LogStart) -> bytes:
    """The bytes of a ``wal/START`` file: the 64-byte header, checksums included, then the
    anchor. The caller validates the fields (``wfstate.wal.start`` does)."""
    body = START_HEADER.pack(
        START_MAGIC,
        FORMAT_VERSION,
        START_HEADER_SIZE,
        len(start.anchor),
        start.epoch,
        start.seq,
        start.first_lsn,
        start.prev_checksum,
        xxh3(start.anchor),
        0,
    )[:START_HEADER_CHECKED]
    return body + struct.pack("<Q", xxh3(body)) + start.anchor


def unpack_start_header(buf: bytes) -> tuple[bytes, int, int, int, int, int, int, int, int, int]:
    """The ten header fields of a START file (the caller checks that 64 bytes exist):
    magic, format_version, header_size, anchor_length, epoch, seq, first_lsn, prev_checksum,
    anchor_checksum, header_checksum."""
    magic, version, size, length, epoch, seq, first, prev, anchor_check, check = (
        START_HEADER.unpack_from(buf, 0)
    )
    return magic, version, size, length, epoch, seq, first, prev, anchor_check, check


# -- checkpoint files (docs/format.md §9.1) ---------------------------------------------------
CHECKPOINTS_DIR: Final = "checkpoints"
CHECKPOINT_MAGIC: Final = b"WFSTCKPT"
CHECKPOINT_HEADER = struct.Struct("<8sHHBBHQQIIQQQ")
CHECKPOINT_HEADER_SIZE: Final = 64
assert CHECKPOINT_HEADER.size == CHECKPOINT_HEADER_SIZE
CHECKPOINT_HEADER_CHECKED: Final = 56  # header_checksum covers bytes 0..55
CHECKPOINT_FULL: Final = 1
CHECKPOINT_INCREMENTAL: Final = 2
CHECKPOINT_SUFFIX: Final = ".ckpt"
FOLDED_SUFFIX: Final = ".folded.ckpt"
_CHECKPOINT_ID = re.compile(r"^ck-[0-9a-f]{16}$")


def checkpoint_file_name(checkpoint_id: str, *, folded: bool = False) -> str:
    """The file name of checkpoint ``checkpoint_id`` in ``checkpoints/`` (§1, §9.3)."""
    return checkpoint_id + (FOLDED_SUFFIX if folded else CHECKPOINT_SUFFIX)


def is_checkpoint_id(value: str) -> bool:
    """Whether ``value`` has the form of a checkpoint id (``ck-`` and 16 hex digits)."""
    return _CHECKPOINT_ID.match(value) is not None


# -- two-phase commit (docs/format.md §10) ----------------------------------------------------
WORKFLOWS_DIR: Final = "workflows"
SESSIONS_DIR: Final = "sessions"
TXN_DIRS: Final = (CHECKPOINTS_DIR, SESSIONS_DIR, WORKFLOWS_DIR)
"""The directories a transaction's participants may live in (one component below each)."""
WORKFLOW_STATE_SUFFIX: Final = ".state"
_TXN_ID = re.compile(r"^tx-[0-9a-f]{16}$")


def is_txn_id(value: str) -> bool:
    """Whether ``value`` has the form of a transaction id (``tx-`` and 16 hex digits)."""
    return _TXN_ID.match(value) is not None


def state_file_name(workflow_id: str) -> str:
    """The workflow state file's path below the store (§10.3): ``workflows/<id>.state``."""
    return f"{WORKFLOWS_DIR}/{workflow_id}{WORKFLOW_STATE_SUFFIX}"


def checkpoint_path(file: str) -> str:
    """A checkpoint file's path below the store: ``checkpoints/<file>``."""
    return f"{CHECKPOINTS_DIR}/{file}"


# -- sessions (docs/format.md §11) --------------------------------------------------------------
SESSION_LOCK_SUFFIX: Final = ".lock"
SESSION_FILE_SUFFIX: Final = ".session"


def session_file_name(session_id: str) -> str:
    """The session record file's path below the store (§11.3): ``sessions/<id>.session``."""
    return f"{SESSIONS_DIR}/{session_id}{SESSION_FILE_SUFFIX}"


SESSION_MAGIC: Final = b"WFSTSESS"
SESSION_HEADER = struct.Struct("<8sHHIQQ")
SESSION_HEADER_SIZE: Final = 32
assert SESSION_HEADER.size == SESSION_HEADER_SIZE
SESSION_HEADER_CHECKED: Final = 24  # header_checksum covers bytes 0..23
_SESSION_ID = re.compile(r"^se-[0-9a-f]{16}$")


def is_session_id(value: object) -> bool:
    """Whether ``value`` has the form of a session id (``se-`` and 16 hex digits)."""
    return isinstance(value, str) and _SESSION_ID.match(value) is not None


# -- names (docs/format.md §1, §2) ------------------------------------------------------------
WAL_DIR: Final = "wal"
QUARANTINE_DIR: Final = "quarantine"
SEGMENT_SUFFIX: Final = ".wal"
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


def xxh3(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """XXH3-64 of ``data`` with ``seed``, the one checksum of the format."""
    return xxhash.xxh3_64_intdigest(data, seed)


def pad8(n: int) -> int:
    """``n`` rounded up to a multiple of 8 (record alignment)."""
    return (n + 7) & ~7


def genesis_checksum(epoch: int) -> int:
    """The chain seed of a store's first segment, derived from its epoch."""
    return xxh3(struct.pack("<Q", epoch))


def segment_name(seq: int, first_lsn: int) -> str:
    """The file name of segment ``seq`` whose first record has ``first_lsn``."""
    return f"{seq:016x}-{first_lsn:016x}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(seq, first_lsn)`` of a segment file name, or None for any other name."""
    m = _SEGMENT_NAME.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


def broken_name(segment: str, offset: int) -> str:
    """Name of the evidence file holding the bytes cut from ``segment`` at ``offset``."""
    return f"{segment}.broken-{offset}"


class SegmentHeader(NamedTuple):
    """A decoded segment header (docs/format.md §2.1), with its dictionary (§2.1.1) if any."""

    epoch: int
    seq: int
    first_lsn: int
    prev_checksum: int
    dictionary: bytes | None = None

    @property
    def size(self) -> int:
        """``header_size``: where the segment's first record starts."""
        return dictionary_header_size(self.dictionary)

    @property
    def codecs(self) -> frozenset[int]:
        """The record codecs valid in this segment (§3.1 rule 2)."""
        return segment_codecs(self.dictionary is not None)


def segment_codecs(has_dictionary: bool) -> frozenset[int]:
    """The record codecs valid in a segment with or without a dictionary (§3.1 rule 2)."""
    return DICTIONARY_CODECS if has_dictionary else CODECS


def dictionary_header_size(dictionary: bytes | None) -> int:
    """``header_size`` of a segment with ``dictionary`` (None: without one)."""
    if dictionary is None:
        return SEGMENT_HEADER_SIZE
    return SEGMENT_HEADER_SIZE + DICTIONARY_BLOCK_SIZE + pad8(len(dictionary))


def pack_segment_header(header: SegmentHeader) -> bytes:
    """The header bytes of a segment, checksums included: 64 bytes, then the dictionary block
    when ``header.dictionary`` is set (its length, 1..2^20, is the caller's to check)."""
    dictionary = header.dictionary
    body = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC,
        FORMAT_VERSION,
        header.size,
        0 if dictionary is None else SEGMENT_HAS_DICTIONARY,
        header.epoch,
        header.seq,
        header.first_lsn,
        header.prev_checksum,
        0,
        0,
    )[:SEGMENT_HEADER_CHECKED]
    check = xxh3(body)
    head = body + struct.pack("<Q", check)
    if dictionary is None:
        return head
    block = DICTIONARY_BLOCK.pack(len(dictionary), 0, xxh3(dictionary, check))
    return head + block + dictionary + bytes(pad8(len(dictionary)) - len(dictionary))


class RecordHeader(NamedTuple):
    """A decoded record header (docs/format.md §3)."""

    checksum: int
    lsn: int
    length: int
    raw_length: int
    type: int
    codec: int
    flags: int
    reserved1: int
    reserved2: int

    @property
    def size(self) -> int:
        """Bytes the whole record occupies on disk, header and padding included."""
        return RECORD_HEADER_SIZE + pad8(self.length)

    def is_plausible(self, expected_lsn: int | None, codecs: frozenset[int] = CODECS) -> bool:
        """Rule 2 of docs/format.md §3.1 (``expected_lsn`` None: any LSN ≥ 1) in a segment
        whose valid codecs are ``codecs`` (:attr:`SegmentHeader.codecs`)."""
        return (
            (self.lsn == expected_lsn if expected_lsn is not None else self.lsn >= 1)
            and self.type != 0
            and self.codec in codecs
            and not (self.flags & ~KNOWN_FLAGS)
            and self.reserved1 == 0
            and self.reserved2 == 0
            and 1 <= self.length <= MAX_PAYLOAD
            and 1 <= self.raw_length <= MAX_PAYLOAD
            and (self.codec != CODEC_NONE or self.raw_length == self.length)
        )


def unpack_record_header(buf: bytes | memoryview, offset: int) -> RecordHeader:
    """Decode the 32 header bytes at ``offset`` (the caller checks that they exist)."""
    return RecordHeader._make(RECORD_HEADER.unpack_from(buf, offset))


def frame_record(
    *,
    seed: int,
    lsn: int,
    record_type: int,
    codec: int,
    flags: int,
    raw_length: int,
    body: bytes,
) -> tuple[bytes, int]:
    """Frame one record: returns its on-disk bytes and its checksum (the next seed)."""
    length = len(body)
    padding = pad8(length) - length
    rest = RECORD_HEADER.pack(0, lsn, length, raw_length, record_type, codec, flags, 0, 0)[8:]
    tail = rest + body + bytes(padding) if padding else rest + body
    checksum = xxhash.xxh3_64_intdigest(tail, seed)
    return checksum.to_bytes(8, "little") + tail, checksum
