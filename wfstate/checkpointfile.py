"""Checkpoint files (docs/format.md §9.1): their bytes, encoded and decoded in memory.

A checkpoint file is a 64-byte header and a stored (possibly compressed) payload, exactly
``64 + length`` bytes. The payload is one MessagePack map, keys in sorted order: ``delta`` (an
incremental checkpoint's :class:`~wfstate.delta.StateDelta`), ``id``, ``origin``, ``parent``
(nil for a full checkpoint), ``state`` (a full checkpoint's state, the canonical bytes of
:func:`~wfstate.model.encode_state`), ``v`` (:data:`~wfstate.model.SCHEMA_VERSION`) and
``workflow_id``. Nothing here does I/O: a store reads and writes the bytes, and compares a
decoded file with its index entry (§9.1's "reads as").

What :func:`decode_checkpoint` verifies, in this order (the first failure is raised)
    1. the header (:func:`read_header`): at least 64 bytes, the magic, ``header_checksum``, the
       format version, then every field rule of §9.1's table;
    2. the epoch is the store's (a checkpoint of another store is refused);
    3. the file is exactly ``64 + length`` bytes (truncation and appended bytes);
    4. ``payload_checksum`` matches the stored payload;
    5. the payload decompresses to exactly ``raw_length`` bytes;
    6. the payload is a map whose ``v`` is the supported schema version, then every field
       decodes with its type and range; ``id`` has the form of a checkpoint id, ``workflow_id``
       is a valid id, ``1 ≤ origin ≤ lsn``; ``kind``, ``parent``, ``state`` and ``delta``
       agree (full: no parent, a state, no delta; incremental: a parent other than ``id``, a
       delta, no state);
    7. the state (full) decodes and passes :func:`~wfstate.model.decode_state`'s checks, or
       the delta (incremental) passes :func:`~wfstate.delta.decode_delta`'s; either names
       ``workflow_id``;
    8. full only: the state has exactly ``state_checksum``. For an incremental checkpoint that
       rule needs the parent's state: the caller resolving the chain applies the delta with
       :func:`yielded_state`, which checks it (:func:`check_state`).

    Damage raises :class:`~wfstate.errors.CorruptionError` ``(path, offset, reason)``, with
    the offset of the header field whose rule failed, or 64 (where the payload starts) for
    anything found in the payload. A higher format version raises
    :class:`~wfstate.errors.FormatVersionError`, a payload of another schema version
    :class:`~wfstate.errors.SchemaVersionError` (intact bytes this code cannot read).

Why damage to any byte is detected
    Every byte is covered by a check made before it is used: bytes 0..55 of the header by
    ``header_checksum`` (XXH3-64, checked right after the magic, so no header field is
    believed from damaged bytes, and a damaged version field is corruption, never taken for a
    newer version); damage to ``header_checksum`` itself makes it disagree with bytes 0..55;
    the stored payload is covered by ``payload_checksum``, itself covered by
    ``header_checksum``; ``length`` (covered too) fixes the file size, so a cut or an appended
    byte is caught by rule 3. A damaged file passes only if XXH3-64 maps damaged bytes to the
    stored checksum (2^-64 for one damaged region). The tests flip every bit and every byte
    of small files, and cut them at every length. Rules 5–8 then catch what a checksum
    cannot: a file that is intact but wrong (a writer's bug, a file of another workflow, a
    checkpoint whose delta was computed from another parent). A file moved from another
    store fails rule 2; one of the same store named by the wrong entry is caught by the
    caller's comparison with the entry (whose ``checksum`` is this ``header_checksum``, which
    covers both other checksums).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Final, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import replace

from wfstate.delta import StateDelta, apply_delta, check_delta, decode_delta, encode_delta
from wfstate.errors import CorruptionError, FormatVersionError, SchemaVersionError, ValidationError
from wfstate.format import (
    CHECKPOINT_FULL,
    CHECKPOINT_HEADER,
    CHECKPOINT_HEADER_CHECKED,
    CHECKPOINT_HEADER_SIZE,
    CHECKPOINT_INCREMENTAL,
    CHECKPOINT_MAGIC,
    CODEC_NONE,
    CODECS,
    FILE_VERSIONS,
    FORMAT_VERSION,
    MAX_PAYLOAD,
    is_checkpoint_id,
    xxh3,
)
from wfstate.ids import validate_id
from wfstate.model import SCHEMA_VERSION, WorkflowState, decode_state, encode_state
from wfstate.model import state_checksum as compute_state_checksum
from wfstate.wal.codec import Compression, compress, decompress

__all__ = [
    "CheckpointHeader",
    "DecodedCheckpoint",
    "check_state",
    "decode_checkpoint",
    "encode_checkpoint",
    "read_header",
    "yielded_state",
]

_T = TypeVar("_T")
_U64_MAX: Final = (1 << 64) - 1
_PAYLOAD_OFFSET: Final = CHECKPOINT_HEADER_SIZE

# Offsets of the header fields (docs/format.md §9.1), named in CorruptionErrors.
_AT_VERSION: Final = 8
_AT_HEADER_SIZE: Final = 10
_AT_KIND: Final = 12
_AT_CODEC: Final = 13
_AT_RESERVED: Final = 14
_AT_EPOCH: Final = 16
_AT_LSN: Final = 24
_AT_LENGTH: Final = 32
_AT_RAW_LENGTH: Final = 36
_AT_PAYLOAD_CHECKSUM: Final = 40
_AT_STATE_CHECKSUM: Final = 48
_AT_HEADER_CHECKSUM: Final = 56


class CheckpointHeader(NamedTuple):
    """The fields of a valid checkpoint header (docs/format.md §9.1).

    ``format_version``, ``header_size`` and ``reserved`` are left out: in a valid header they
    are always ``FORMAT_VERSION``, 64 and 0.
    """

    kind: int
    codec: int
    epoch: int
    lsn: int
    length: int
    raw_length: int
    payload_checksum: int
    state_checksum: int
    header_checksum: int

    @property
    def file_size(self) -> int:
        """The exact size of the file this header starts."""
        return CHECKPOINT_HEADER_SIZE + self.length


class DecodedCheckpoint(NamedTuple):
    """A checkpoint file that passed :func:`decode_checkpoint`.

    Exactly one of ``state`` (``kind`` full) and ``delta`` (``kind`` incremental) is set;
    ``parent`` is None exactly for a full checkpoint. ``size`` is the file's size in bytes.
    The fields a store compares with the checkpoint's index entry are ``checkpoint_id``,
    ``workflow_id``, ``origin``, ``parent``, ``lsn``, ``kind`` and ``header_checksum``.
    """

    checkpoint_id: str
    workflow_id: str
    origin: int
    parent: str | None
    lsn: int
    kind: int
    state: WorkflowState | None
    delta: StateDelta | None
    state_checksum: int
    header_checksum: int
    size: int


class _Payload(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, omit_defaults=True
):
    """The payload map; fields declared in sorted order, so they are written sorted.

    ``state`` and ``delta`` stay encoded (``Raw``): the state's bytes are exactly
    :func:`~wfstate.model.encode_state`'s, and each is decoded by its own module.
    """

    delta: msgspec.Raw | UnsetType = UNSET
    id: str
    origin: Annotated[int, msgspec.Meta(ge=0)]  # 0: imported (docs/format.md §9.8)
    parent: str | None
    state: msgspec.Raw | UnsetType = UNSET
    v: Annotated[int, msgspec.Meta(ge=0)]
    workflow_id: str


class _PayloadVersion(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The one payload field read before the others: the schema version ``v``."""

    v: Annotated[int, msgspec.Meta(ge=0)]


_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_VERSION_DECODER: Final = msgspec.msgpack.Decoder(_PayloadVersion)
_PAYLOAD_DECODER: Final = msgspec.msgpack.Decoder(_Payload)


# -- the header -------------------------------------------------------------------------------


def _pack_header(header: CheckpointHeader) -> bytes:
    """The 64 header bytes, ``header_checksum`` computed (the one in ``header`` is ignored)."""
    body = CHECKPOINT_HEADER.pack(
        CHECKPOINT_MAGIC,
        FORMAT_VERSION,
        CHECKPOINT_HEADER_SIZE,
        header.kind,
        header.codec,
        0,
        header.epoch,
        header.lsn,
        header.length,
        header.raw_length,
        header.payload_checksum,
        header.state_checksum,
        0,
    )[:CHECKPOINT_HEADER_CHECKED]
    return body + xxh3(body).to_bytes(8, "little")


def read_header(data: bytes, path: str) -> CheckpointHeader:
    """The header at the start of ``data``, verified by every rule of docs/format.md §9.1.

    Only the first 64 bytes are read: the file's size, its epoch and its payload are checked
    by :func:`decode_checkpoint`. (This is also the cheap way to the ``header_checksum`` of a
    file just encoded, which its ``CHECKPOINT`` entry records.) The checksum is checked right
    after the magic, before any field is believed; then a format version above
    ``FORMAT_VERSION`` raises FormatVersionError and one below 2 (version 1 had no
    checkpoint files) CorruptionError. Every other failure raises CorruptionError at the
    offset of the field.
    """
    if len(data) < CHECKPOINT_HEADER_SIZE:
        raise CorruptionError(
            path, 0, f"checkpoint file is {len(data)} bytes, shorter than its 64-byte header"
        )
    (
        magic,
        version,
        header_size,
        kind,
        codec,
        reserved,
        epoch,
        lsn,
        length,
        raw_length,
        payload_checksum,
        state_sum,
        header_checksum,
    ) = CHECKPOINT_HEADER.unpack_from(data, 0)
    if magic != CHECKPOINT_MAGIC:
        raise CorruptionError(path, 0, f"bad checkpoint magic {magic!r}")
    if header_checksum != xxh3(data[:CHECKPOINT_HEADER_CHECKED]):
        raise CorruptionError(path, _AT_HEADER_CHECKSUM, "checkpoint header checksum mismatch")
    if version > FORMAT_VERSION:
        raise FormatVersionError(path, version, FORMAT_VERSION)
    if version not in FILE_VERSIONS:
        raise CorruptionError(
            path, _AT_VERSION, f"format version {version} has no checkpoint files"
        )
    if header_size != CHECKPOINT_HEADER_SIZE:
        raise CorruptionError(path, _AT_HEADER_SIZE, f"header size {header_size}, not 64")
    if kind not in (CHECKPOINT_FULL, CHECKPOINT_INCREMENTAL):
        raise CorruptionError(path, _AT_KIND, f"unknown checkpoint kind {kind}")
    if codec not in CODECS:
        raise CorruptionError(path, _AT_CODEC, f"unknown codec {codec}")
    if reserved != 0:
        raise CorruptionError(path, _AT_RESERVED, "reserved header bytes are not zero")
    if not 1 <= length <= MAX_PAYLOAD:
        raise CorruptionError(path, _AT_LENGTH, f"payload length {length} out of range")
    if not 1 <= raw_length <= MAX_PAYLOAD:
        raise CorruptionError(path, _AT_RAW_LENGTH, f"raw payload length {raw_length} out of range")
    if codec == CODEC_NONE and raw_length != length:
        raise CorruptionError(
            path,
            _AT_RAW_LENGTH,
            f"uncompressed payload of {length} bytes has raw length {raw_length}",
        )
    return CheckpointHeader(
        kind=kind,
        codec=codec,
        epoch=epoch,
        lsn=lsn,
        length=length,
        raw_length=raw_length,
        payload_checksum=payload_checksum,
        state_checksum=state_sum,
        header_checksum=header_checksum,
    )


# -- encoding ---------------------------------------------------------------------------------


def _require_uint(value: object, field: str, low: int, high: int = _U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(field, f"must be an int in {low}..{high}, not {value!r}")
    return value


def _require_checkpoint_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not is_checkpoint_id(value):
        raise ValidationError(field, f"must be `ck-` and 16 lowercase hex digits, not {value!r}")
    return value


def encode_checkpoint(
    *,
    checkpoint_id: str,
    workflow_id: str,
    origin: int,
    lsn: int,
    epoch: int,
    parent: str | None,
    state: WorkflowState | None,
    delta: StateDelta | None,
    state_checksum: int | None = None,
    compression: Compression | None = None,
) -> bytes:
    """The whole checkpoint file: full when ``parent`` is None (give ``state``), incremental
    otherwise (give ``delta``, the delta from the parent checkpoint's state).

    ``state_checksum`` is :func:`~wfstate.model.state_checksum` of the state the file yields:
    ``state`` (computed here when None, checked here otherwise), or the child state ``delta``
    was computed to (the caller's, required: it is not in the arguments). A full checkpoint
    stores ``state`` with ``metadata.last_lsn`` 0, so its checksum is the hash of the stored
    bytes, and it decodes with ``last_lsn`` 0 (the LSN stamp is the store's: ``lsn``).
    ``compression`` as the log's (default zstd level 3; a payload
    under the threshold, or that does not shrink, is stored with codec 0).

    Raises ValidationError naming the argument, before producing anything, when: an id has
    the wrong form (``checkpoint_id`` and ``parent``: ``ck-`` and 16 hex digits; ``parent``
    not ``checkpoint_id``; ``workflow_id``: :func:`~wfstate.ids.validate_id`); a number is out
    of range (``1 ≤ origin ≤ lsn < 2^64``, or ``origin`` 0 for an imported checkpoint,
    which is full; ``1 ≤ epoch < 2^64``, ``0 ≤ state_checksum <
    2^64``); ``state``/``delta`` do not match the kind; the state or delta belongs to another
    workflow or schema version (:func:`~wfstate.delta.check_delta` for a delta); the state's
    checksum is not ``state_checksum``; the payload exceeds 2^30 bytes.
    """
    _require_checkpoint_id(checkpoint_id, "checkpoint_id")
    validate_id(workflow_id, "workflow_id")
    _require_uint(origin, "origin", 0)
    _require_uint(lsn, "lsn", origin)
    if origin == 0 and (parent is not None or delta is not None):
        raise ValidationError("origin", "0 (imported) is only for a full checkpoint")
    _require_uint(epoch, "epoch", 1)
    if state_checksum is not None or parent is not None:
        _require_uint(state_checksum, "state_checksum", 0)
    if compression is None:
        compression = Compression()
    elif not isinstance(compression, Compression):
        raise ValidationError("compression", "must be a wfstate.wal.Compression")
    if parent is None:
        kind = CHECKPOINT_FULL
        if delta is not None:
            raise ValidationError("delta", "a full checkpoint (no parent) carries a state")
        encoded, state_checksum = _full_state_bytes(state, workflow_id, lsn, state_checksum)
        document = _Payload(
            id=checkpoint_id,
            origin=origin,
            parent=None,
            state=msgspec.Raw(encoded),
            v=SCHEMA_VERSION,
            workflow_id=workflow_id,
        )
    else:
        kind = CHECKPOINT_INCREMENTAL
        _require_checkpoint_id(parent, "parent")
        if parent == checkpoint_id:
            raise ValidationError("parent", "a checkpoint cannot be its own parent")
        if state is not None:
            raise ValidationError("state", "an incremental checkpoint carries a delta")
        if not isinstance(delta, StateDelta):
            raise ValidationError("delta", f"must be a StateDelta, not {type(delta).__name__}")
        check_delta(delta)
        if delta.workflow.id != workflow_id:
            raise ValidationError(
                "delta.workflow.id", f"{delta.workflow.id!r} is not the workflow {workflow_id!r}"
            )
        document = _Payload(
            delta=msgspec.Raw(encode_delta(delta)),
            id=checkpoint_id,
            origin=origin,
            parent=parent,
            v=SCHEMA_VERSION,
            workflow_id=workflow_id,
        )
    assert state_checksum is not None
    payload = _ENCODER.encode(document)
    if len(payload) > MAX_PAYLOAD:
        raise ValidationError(
            "state" if parent is None else "delta",
            f"the checkpoint payload is {len(payload)} bytes, more than 2^30",
        )
    codec, body = compress(payload, compression)
    header = _pack_header(
        CheckpointHeader(
            kind=kind,
            codec=codec,
            epoch=epoch,
            lsn=lsn,
            length=len(body),
            raw_length=len(payload),
            payload_checksum=xxh3(body),
            state_checksum=state_checksum,
            header_checksum=0,
        )
    )
    return header + body


def _full_state_bytes(
    state: WorkflowState | None, workflow_id: str, lsn: int, expected: int | None
) -> tuple[bytes, int]:
    """The stored bytes of a full checkpoint's state (its canonical encoding with
    ``last_lsn`` 0) and their checksum, after checking the state belongs."""
    if not isinstance(state, WorkflowState):
        raise ValidationError("state", f"must be a WorkflowState, not {type(state).__name__}")
    if state.workflow.id != workflow_id:
        raise ValidationError(
            "state.workflow.id", f"{state.workflow.id!r} is not the workflow {workflow_id!r}"
        )
    if state.metadata.schema_version != SCHEMA_VERSION:
        raise ValidationError(
            "state.metadata.schema_version",
            f"schema version {state.metadata.schema_version} is not {SCHEMA_VERSION}",
        )
    encoded = encode_state(replace(state, metadata=replace(state.metadata, last_lsn=0)))
    actual = xxh3(encoded)  # state_checksum() is exactly this hash
    if expected is not None and actual != expected:
        raise ValidationError(
            "state_checksum", f"{expected:#018x} is not the state's checksum {actual:#018x}"
        )
    return encoded, actual


# -- decoding ---------------------------------------------------------------------------------


def decode_checkpoint(data: bytes, path: str, *, epoch: int) -> DecodedCheckpoint:
    """The checkpoint file ``data`` of the store ``epoch``, verified (module docstring, 1–8).

    ``path`` only names the file in errors. Raises CorruptionError for any damage or
    inconsistency, FormatVersionError for a file of a newer format version, and
    SchemaVersionError for a payload of a schema version other than
    :data:`~wfstate.model.SCHEMA_VERSION` (this code has no upgrade for checkpoint states).
    """
    header = read_header(data, path)
    if header.epoch != epoch:
        raise CorruptionError(
            path, _AT_EPOCH, f"checkpoint of store epoch {header.epoch:#x}, not {epoch:#x}"
        )
    if len(data) != header.file_size:
        raise CorruptionError(
            path,
            min(len(data), header.file_size),
            f"checkpoint file is {len(data)} bytes, its header says {header.file_size}",
        )
    stored = memoryview(data)[_PAYLOAD_OFFSET:]
    if xxh3(stored) != header.payload_checksum:
        raise CorruptionError(path, _AT_PAYLOAD_CHECKSUM, "checkpoint payload checksum mismatch")
    try:
        raw = decompress(header.codec, stored, header.raw_length)
    except ValueError as exc:
        raise CorruptionError(path, _PAYLOAD_OFFSET, f"checkpoint payload: {exc}") from exc
    document = _decode_payload(raw, path)
    _check_payload(document, header, path)
    if header.kind == CHECKPOINT_FULL:
        assert not isinstance(document.state, UnsetType)  # _check_payload
        # the payload checksum proves these are the bytes the writer encoded from a state it
        # had validated: the invariants are not checked again (check_state still is)
        state = _decoded_part(_decode_trusted_state, document.state, path)
        if state.workflow.id != document.workflow_id:
            raise CorruptionError(
                path, _PAYLOAD_OFFSET, f"the state is of workflow {state.workflow.id!r}"
            )
        # the stored bytes are the canonical encoding with last_lsn 0: their hash must be the
        # state checksum (no re-encoding needed); the state comes back with last_lsn 0
        if xxh3(document.state) != header.state_checksum:
            raise CorruptionError(
                path, _AT_STATE_CHECKSUM, "the stored state does not have the state checksum"
            )
        return _decoded(document, header, data, state=state, delta=None)
    assert not isinstance(document.delta, UnsetType)  # _check_payload
    delta = _decoded_part(decode_delta, document.delta, path)
    if delta.workflow.id != document.workflow_id:
        raise CorruptionError(
            path, _PAYLOAD_OFFSET, f"the delta is of workflow {delta.workflow.id!r}"
        )
    return _decoded(document, header, data, state=None, delta=delta)


def _decode_payload(raw: bytes, path: str) -> _Payload:
    """The payload map, judged by its ``v`` first (docs/format.md §5.1's order): a payload of
    another schema version is a SchemaVersionError even where its fields do not decode.

    One pass in the common case: each pass walks the whole embedded state (about 0.2 ms per
    MB), so ``v`` alone is decoded only when the whole payload is not of this version."""
    try:
        document = _PAYLOAD_DECODER.decode(raw)
    except msgspec.MsgspecError as exc:
        _check_version(raw, path)
        raise CorruptionError(path, _PAYLOAD_OFFSET, f"checkpoint payload: {exc}") from exc
    if document.v != SCHEMA_VERSION:
        _check_version(raw, path)
    return document


def _check_version(raw: bytes, path: str) -> None:
    """SchemaVersionError if the payload's ``v`` is not :data:`SCHEMA_VERSION`,
    CorruptionError if it has none that decodes."""
    try:
        version = _VERSION_DECODER.decode(raw).v
    except msgspec.MsgspecError as exc:
        raise CorruptionError(path, _PAYLOAD_OFFSET, f"checkpoint payload: {exc}") from exc
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(path, version, supported=SCHEMA_VERSION, oldest=SCHEMA_VERSION)


def _check_payload(document: _Payload, header: CheckpointHeader, path: str) -> None:
    """Rule 6 of the module docstring, after the fields decoded with their types."""

    def bad(reason: str) -> CorruptionError:
        return CorruptionError(path, _PAYLOAD_OFFSET, f"checkpoint payload: {reason}")

    if not is_checkpoint_id(document.id):
        raise bad(f"id {document.id!r} is not a checkpoint id")
    try:
        validate_id(document.workflow_id, "workflow_id")
    except ValidationError as exc:
        raise bad(str(exc)) from exc
    if header.lsn < document.origin:
        raise CorruptionError(
            path, _AT_LSN, f"LSN {header.lsn} is before the workflow's origin {document.origin}"
        )
    has_state = not isinstance(document.state, UnsetType)
    has_delta = not isinstance(document.delta, UnsetType)
    if document.origin == 0 and header.kind != CHECKPOINT_FULL:
        raise bad("origin 0 (imported) in an incremental checkpoint")
    if header.kind == CHECKPOINT_FULL:
        if document.parent is not None:
            raise bad(f"a full checkpoint names a parent {document.parent!r}")
        if not has_state or has_delta:
            raise bad("a full checkpoint holds a `state` and no `delta`")
        return
    if document.parent is None or not is_checkpoint_id(document.parent):
        raise bad(f"parent {document.parent!r} of an incremental checkpoint is not a checkpoint id")
    if document.parent == document.id:
        raise bad("the checkpoint names itself as its parent")
    if not has_delta or has_state:
        raise bad("an incremental checkpoint holds a `delta` and no `state`")


def _decode_trusted_state(data: bytes) -> WorkflowState:
    return decode_state(data, invariants=False)


def _decoded_part(decode: Callable[[bytes], _T], part: msgspec.Raw, path: str) -> _T:
    """``decode`` of an embedded state or delta; its ValidationError as CorruptionError."""
    try:
        return decode(bytes(part))
    except ValidationError as exc:
        raise CorruptionError(path, _PAYLOAD_OFFSET, f"checkpoint payload: {exc}") from exc


def _decoded(
    document: _Payload,
    header: CheckpointHeader,
    data: bytes,
    *,
    state: WorkflowState | None,
    delta: StateDelta | None,
) -> DecodedCheckpoint:
    return DecodedCheckpoint(
        checkpoint_id=document.id,
        workflow_id=document.workflow_id,
        origin=document.origin,
        parent=document.parent,
        lsn=header.lsn,
        kind=header.kind,
        state=state,
        delta=delta,
        state_checksum=header.state_checksum,
        header_checksum=header.header_checksum,
        size=len(data),
    )


# -- the state a checkpoint yields ------------------------------------------------------------


def check_state(decoded: DecodedCheckpoint, state: WorkflowState, path: str) -> None:
    """Raise CorruptionError unless ``state`` has the checkpoint's ``state_checksum``.

    The last rule of docs/format.md §9.1: the state a checkpoint yields (an incremental one:
    applied to the state its parent yields, recursively) has exactly ``state_checksum``.
    """
    actual = compute_state_checksum(state)
    if actual != decoded.state_checksum:
        raise CorruptionError(
            path,
            _AT_STATE_CHECKSUM,
            f"the state the checkpoint yields has checksum {actual:#018x}, "
            f"its header says {decoded.state_checksum:#018x}",
        )


def yielded_state(
    decoded: DecodedCheckpoint, parent_state: WorkflowState | None, path: str
) -> WorkflowState:
    """The state checkpoint ``decoded`` yields, verified by :func:`check_state`.

    A full checkpoint yields its own state (``parent_state`` is ignored). An incremental one
    yields its delta applied to ``parent_state``, the state its parent checkpoint yields
    (resolving the chain is the caller's); a delta that does not apply to it, or a result
    without ``state_checksum``, raises CorruptionError: the file, or its parent, is bad.
    """
    if decoded.state is not None:
        return decoded.state
    assert decoded.delta is not None  # DecodedCheckpoint: exactly one of state and delta
    if parent_state is None:
        raise ValidationError("parent_state", "an incremental checkpoint needs its parent's state")
    try:
        state = apply_delta(parent_state, decoded.delta)
    except ValidationError as exc:
        raise CorruptionError(
            path, _PAYLOAD_OFFSET, f"the delta does not apply to the parent's state: {exc}"
        ) from exc
    check_state(decoded, state, path)
    return state
